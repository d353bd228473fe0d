"""Optimiser groups, lr schedule, loss and recipes against independent formulas; a short run learns."""

import copy
import json
import math
import re
import shutil
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import segformer.pretrained
import segformer.train as trainer
from reference import tiny_recipe
from segformer.benchmark import Case, make_step
from segformer.cli import build_parser, main
from segformer.config import TestProtocol as Protocol  # not collected as a test class
from segformer.data.synthetic import write_synthetic
from segformer.device import autocast_dtype
from segformer.model import create_model
from segformer.plots import nice_ticks
from segformer.pretrained import from_pretrained
from segformer.recipe import dump_recipe, load_recipe, packaged_recipes
from segformer.train import build_model, train
from segformer.training.optim import build_optimizer, set_lr
from segformer.training.step import recipe_loss, train_step

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def demo_loss(num_classes: int, class_weights: np.ndarray | None = None):
    """The trainer's loss (``recipe_loss``) of the demo recipe, optionally with ``loss.class_weights``."""
    weights = [] if class_weights is None else class_weights.tolist()
    return recipe_loss(load_recipe("demo", [f"loss.class_weights={weights}"]), num_classes, CPU)


def mmcv_rule(name: str) -> tuple[float, float]:
    """(lr_mult, decay_mult) of mmcv's DefaultOptimizerConstructor for the official SegFormer custom_keys."""
    custom_keys = {"pos_block": (1.0, 0.0), "norm": (1.0, 0.0), "head": (10.0, 1.0)}
    for key in sorted(sorted(custom_keys), key=len, reverse=True):  # longest first, ties alphabetical
        if key in name:
            return custom_keys[key]
    return 1.0, 1.0


def test_param_groups_follow_the_official_paramwise_cfg():
    model = create_model("b0", num_classes=6)
    optimizer = build_optimizer(model, lr=6e-5, weight_decay=0.01, head_lr_mult=10.0)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(group_of) == sum(1 for _ in model.parameters())
    for name, param in model.named_parameters():
        lr_mult, decay_mult = mmcv_rule(name)
        group = group_of[id(param)]
        assert group["lr"] == pytest.approx(6e-5 * lr_mult), name
        assert group["weight_decay"] == pytest.approx(0.01 * decay_mult), name
    names = {name: group_of[id(p)] for name, p in model.named_parameters()}
    # spelled out: the decoder BatchNorm is matched by "head" first, so it keeps weight decay
    assert names["decode_head.linear_fuse.bn.weight"]["lr"] == pytest.approx(6e-4)
    assert names["decode_head.linear_fuse.bn.weight"]["weight_decay"] == pytest.approx(0.01)
    for no_decay in ("backbone.block1.0.norm1.weight", "backbone.block2.1.attn.norm.bias", "backbone.norm4.weight"):
        assert names[no_decay]["weight_decay"] == 0.0 and names[no_decay]["lr"] == pytest.approx(6e-5)
    assert names["backbone.patch_embed1.norm.weight"]["weight_decay"] == 0.0
    assert names["backbone.block1.0.attn.q.bias"]["weight_decay"] == pytest.approx(0.01)


@pytest.mark.parametrize("iteration", [0, 1, 1499, 1500, 80000, 159999])
def test_poly_schedule_with_linear_warmup(iteration):
    model = create_model("b0", num_classes=6)
    optimizer = build_optimizer(model, lr=6e-5, head_lr_mult=10.0)
    set_lr(optimizer, iteration, 160000, power=1.0, min_lr=0.0, warmup_iters=1500, warmup_ratio=1e-6)
    for group in optimizer.param_groups:
        base = 6e-4 if group["name"] == "head" else 6e-5
        poly = base * (1 - iteration / 160000)
        if iteration < 1500:  # mmcv: warmup lr = lr_poly · (1 − (1 − ratio)(1 − it / warmup_iters))
            expected = poly * (1 - (1 - 1e-6) * (1 - iteration / 1500))
        else:
            expected = poly
        assert group["lr"] == pytest.approx(expected, rel=1e-12)
    if iteration == 0:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(6e-5 * 1e-6)
    if iteration == 159999:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(6e-5 / 160000)


def test_poly_power_and_min_lr():
    model = create_model("b0", num_classes=2)
    optimizer = build_optimizer(model, lr=1e-2, head_lr_mult=1.0)
    lr = set_lr(optimizer, 500, 1000, power=0.9, min_lr=1e-4, warmup_iters=0, warmup_ratio=1e-6)
    assert lr == pytest.approx((1e-2 - 1e-4) * 0.5**0.9 + 1e-4)


def numpy_cross_entropy(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None) -> float:
    """mmseg CrossEntropyLoss: per-pixel −w[y]·log softmax, ignored pixels 0, mean over all pixels."""
    shifted = logits - logits.max(1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    total = 0.0
    b, _, h, w = logits.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                c = labels[i, y, x]
                if c != 255:
                    total -= (1.0 if weights is None else weights[c]) * log_prob[i, c, y, x]
    return total / labels.size


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_matches_numpy_cross_entropy(weighted):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 5, 6))
    labels[0, :2] = 255
    weights = np.array([0.5, 1.0, 2.0, 3.0], np.float32) if weighted else None
    loss = demo_loss(4, weights)(torch.from_numpy(logits), torch.from_numpy(labels))
    assert loss.item() == pytest.approx(numpy_cross_entropy(logits, labels, weights), rel=1e-5)


def test_loss_resizes_logits_to_the_label_size():
    # spatially constant logits are unchanged by bilinear resizing: the loss is −log softmax of the label's class
    logits = torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1).expand(1, 3, 4, 4).contiguous()
    labels = torch.full((1, 16, 16), 1)
    expected = -math.log(math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(0.5)))
    assert demo_loss(3)(logits, labels).item() == pytest.approx(expected, rel=1e-6)


PAPER = {  # paper §4.1 and the official local_configs: (crop, scale short side, batch per GPU, iterations, classes)
    "ade20k": (512, 512, 2, 160000, 150),
    "cityscapes": (1024, 1024, 1, 160000, 19),
    "coco-stuff": (512, 512, 2, 80000, 171),
}


def test_packaged_recipes_match_the_paper():
    names = packaged_recipes()
    assert {"custom", "demo"} <= set(names)
    for dataset, (crop, short, batch, iters, classes) in PAPER.items():
        for variant in ("b0", "b1", "b2", "b3", "b4", "b5"):
            recipe = load_recipe(f"{dataset}-{variant}")
            if dataset == "ade20k" and variant == "b5":
                crop, short = 640, 640
            assert recipe.model.variant == variant and recipe.model.num_classes == classes
            assert recipe.model.init == f"nvidia/mit-{variant}" and recipe.model.drop_path_rate == 0.1
            assert recipe.data.dataset == dataset
            assert recipe.data.crop == [crop, crop] and recipe.data.scale == [2048, short]
            assert recipe.data.ratio_range == [0.5, 2.0] and recipe.data.cat_max_ratio == 0.75
            assert recipe.data.batch_size == batch and recipe.schedule.iters == iters
            optim = recipe.optim
            assert (optim.lr, optim.betas, optim.weight_decay, optim.head_lr_mult) == (6e-5, [0.9, 0.999], 0.01, 10.0)
            assert (optim.warmup_iters, optim.warmup_ratio, optim.power, optim.min_lr) == (1500, 1e-6, 1.0, 0.0)
            assert recipe.accumulate == 1 and recipe.clip_grad == 0.0
    for name in names:
        load_recipe(name)


def test_overrides_are_type_checked_and_unknown_keys_named(tmp_path):
    recipe = load_recipe("ade20k-b0", ["optim.lr=1e-4", "data.crop=[256, 256]", "seed=3", "data.dataset=custom"])
    assert (recipe.optim.lr, recipe.data.crop, recipe.seed, recipe.data.dataset) == (1e-4, [256, 256], 3, "custom")
    with pytest.raises(ValueError, match=r"unknown key 'lrate'.*lr, betas, weight_decay, head_lr_mult"):
        load_recipe("ade20k-b0", ["optim.lrate=1"])
    with pytest.raises(ValueError, match=r"unknown section 'optimizer'"):
        load_recipe("ade20k-b0", ["optimizer.lr=1"])
    with pytest.raises(ValueError, match=r"optim.lr: expected float, got str"):
        load_recipe("ade20k-b0", ["optim.lr=fast"])
    with pytest.raises(ValueError, match=r"data.batch_size: expected int, got float"):
        load_recipe("ade20k-b0", ["data.batch_size=2.5"])
    with pytest.raises(ValueError, match=r"precision must be one of fp32, bf16, fp16"):
        load_recipe("ade20k-b0", ["precision=fp8"])
    partial = tmp_path / "partial.toml"
    partial.write_text("seed = 0\n")
    with pytest.raises(ValueError, match=r"partial.toml: missing key precision .*or pass --set precision=VALUE"):
        load_recipe(partial)
    older = tmp_path / "older.toml"  # a run folder's recipe from before the [train] section existed
    older.write_text(re.sub(r"\[train\][^\[]*", "", dump_recipe(load_recipe("demo"))))
    with pytest.raises(ValueError, match=r"missing section \[train\].* --set train.compile=VALUE"):
        load_recipe(older)
    train_keys = ["compile=false", "channels_last=auto", "checkpointing=false", "published_batch=8"]
    assert load_recipe(older, [f"train.{key}" for key in train_keys]) == load_recipe("demo")
    with pytest.raises(ValueError, match=r"unknown recipe 'ade20k-b9'"):
        load_recipe("ade20k-b9")


def test_short_run_lowers_the_loss_and_raises_miou(tmp_path):
    # 8 synthetic scenes, validated on the same scenes: 40 steps of the real trainer must fit them
    root = write_synthetic(tmp_path / "data", num_train=8, num_val=0, size=(64, 64), seed=0)
    for kind in ("images", "masks"):
        shutil.rmtree(root / kind / "val")
        shutil.copytree(root / kind / "train", root / kind / "val")
    settings = {
        "schedule.iters": 40,
        "schedule.val_interval": 20,
        "schedule.log_interval": 5,
        "data.batch_size": 8,
        "data.photometric": "false",
        "data.ratio_range": "[1.0, 1.0]",
        "optim.lr": 1e-3,
        "loss.class_weights": "[]",
    }
    recipe = tiny_recipe(root, settings)
    summary = train(recipe, tmp_path / "run", device="cpu")

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.3 * losses[0]
    # background covers ~80% of the pixels: predicting it everywhere scores mIoU ~0.14 and mAcc 1/6
    final = [r for r in records if "mIoU" in r][-1]
    assert final["mIoU"] > 0.5 and final["mAcc"] > 0.6
    assert summary["best_miou"] == max(r["mIoU"] for r in records if "mIoU" in r)
    # the best weights are exported for from_pretrained, and the curves are drawn
    best = from_pretrained(tmp_path / "run" / "best")
    assert best.class_names[1:3] == ["disc", "square"]
    assert Image.open(tmp_path / "run" / "curves.png").size == (1000, 400)


def test_curve_ticks_are_round_numbers_covering_the_data():
    assert nice_ticks(0, 0.83) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # raw step 0.166 -> 0.2
    assert nice_ticks(0, 160000) == [0, 50000, 100000, 150000, 200000]  # raw 32000 -> 50000
    assert nice_ticks(0.74, 0.81) == [0.74, 0.76, 0.78, 0.8, 0.82]  # raw 0.014 -> 0.02


def test_accumulated_micro_batches_give_the_full_batch_gradient_and_clipping_bounds_it():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)  # any network returning logits; no BatchNorm, so accumulation is exact
    images, masks = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4, 8, 8))
    masks[0, :2] = 255
    # oracle: autograd of mmseg's loss (mean over all pixels, ignored ones 0) on the whole batch at once
    per_pixel = torch.nn.functional.cross_entropy(model(images), masks, ignore_index=255, reduction="none")
    expected = torch.autograd.grad(per_pixel.mean(), model.weight)[0]

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    halves = [(images[:2], masks[:2]), (images[2:], masks[2:])]
    cpu = torch.device("cpu")
    options = {"optimizer": optimizer, "scaler": scaler, "device": cpu, "loss": demo_loss(4)}
    loss = train_step(network=model, batches=halves, **options)
    torch.testing.assert_close(model.weight.grad, expected, rtol=1e-5, atol=1e-7)
    assert loss.item() == pytest.approx(per_pixel.mean().item(), rel=1e-6)

    train_step(network=model, batches=halves, **options, clip_grad=1e-3)
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)
    with pytest.raises(TypeError, match="positional"):  # keyword-only: nine arguments are not told apart by position
        train_step(model, halves, optimizer, scaler, cpu)


def test_the_benchmark_times_the_trainers_own_step(tmp_path, monkeypatch):
    """One ``segformer benchmark --train`` step from the trainer's start on its batch gives its weights, bit for bit."""
    root = write_synthetic(tmp_path / "data", num_train=4, num_val=2, size=(64, 64), seed=0)
    recipe = tiny_recipe(root, {"schedule.iters": 1, "model.drop_path_rate": 0.0, "model.decoder_dropout": 0.0})
    recipe.optim = load_recipe("custom").optim  # the benchmark's optimiser: the official settings
    recipe.optim.warmup_iters = 0  # so the trainer's first step runs at the base lr, as every benchmark step does
    recorded, original = {}, trainer.train_step

    def recording(**kwargs):
        network = kwargs["network"]
        recorded["before"] = copy.deepcopy(network.state_dict())
        recorded["batch"] = kwargs["batches"][0]
        loss = original(**kwargs)
        recorded["after"] = copy.deepcopy(network.state_dict())
        return loss

    monkeypatch.setattr(trainer, "train_step", recording)
    train(recipe, tmp_path / "run", device="cpu", quiet=True)

    images, masks = recorded["batch"]
    case = Case(variant="b0", height=64, width=64, batch_size=2, train=True, num_classes=6)
    model = create_model("b0", num_classes=6, drop_path_rate=0.0, decoder_dropout=0.0)
    model.load_state_dict(recorded["before"])
    make_step(model.train(), "ours", case, images, masks)()
    for key, value in recorded["after"].items():
        assert torch.equal(model.state_dict()[key], value), key

    # the parameter groups matter: plain AdamW over model.parameters() ends elsewhere (decoder lr × 1, norms decayed)
    plain = create_model("b0", num_classes=6, drop_path_rate=0.0, decoder_dropout=0.0)
    plain.load_state_dict(recorded["before"])
    optimizer = torch.optim.AdamW(plain.train().parameters(), lr=6e-5, weight_decay=0.01)
    demo_loss(6)(plain(images), masks).backward()
    optimizer.step()
    for key in ("decode_head.linear_pred.weight", "backbone.norm1.weight"):
        assert not torch.equal(plain.state_dict()[key], recorded["after"][key]), key


def test_train_takes_the_shared_quiet_flag():
    assert build_parser("train").parse_args(["demo", "-q"]).quiet
    assert build_parser("train").parse_args(["demo", "--threads", "2"]).threads == 2


def test_from_scratch_trains_the_custom_recipe_offline_with_random_weights(tmp_path, monkeypatch, capsys):
    root = write_synthetic(tmp_path / "data", num_train=4, num_val=2, size=(64, 64), seed=0)

    def no_download(*args, **kwargs):
        raise AssertionError("--from-scratch must not look for weights")

    monkeypatch.setattr(trainer, "from_pretrained", no_download)
    monkeypatch.setattr(segformer.pretrained, "hub_folder", no_download)
    monkeypatch.setattr(socket, "create_connection", no_download)
    small = ["model.variant=b0", "data.crop=[64, 64]", "data.scale=[64, 64]", "data.test_scale=[64, 64]"]
    small += ["data.batch_size=2", "data.workers=0", "schedule.iters=1", "precision=fp32", "optim.head_lr_mult=2.0"]
    argv = ["train", "custom", "--from-scratch", "--data-root", str(root), "--device", "cpu", "-q"]
    run = tmp_path / "run"
    assert main([*argv, "--out", str(run), *(f"--set={value}" for value in small)]) == 0, capsys.readouterr().err
    saved = load_recipe(run / "recipe.toml")
    assert saved.model.init == "" and saved.optim.lr == 1e-3  # random weights, the demo's from-scratch lr
    assert saved.optim.head_lr_mult == 2.0  # --set wins over --from-scratch

    # without the flag, the hub id of model.init that cannot be had names --from-scratch
    def offline(repo_id):
        raise segformer.pretrained.CheckpointError(f"{repo_id}: not in the Hugging Face cache (offline)")

    monkeypatch.setattr(segformer.pretrained, "hub_folder", offline)
    monkeypatch.setattr(trainer, "from_pretrained", segformer.pretrained.from_pretrained)
    assert main([*argv[:2], *argv[3:], "--out", str(tmp_path / "other"), *(f"--set={v}" for v in small)]) == 1
    err = capsys.readouterr().err
    assert "nvidia/mit-b2: not in the Hugging Face cache (offline)" in err and "--from-scratch" in err


def test_fp16_needs_cuda_and_falls_back_to_fp32_with_a_warning():
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.warns(UserWarning, match="fp16 mixed precision needs a CUDA device"):
        assert autocast_dtype("fp16", torch.device("cpu")) is None


def test_init_from_a_backbone_only_checkpoint(tmp_path):
    # an official ImageNet MiT file: backbone keys without "backbone.", plus a classifier head to drop
    source = create_model("b0", num_classes=6)
    state = {k.removeprefix("backbone."): v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    state |= {"head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "mit_b0.pth")
    recipe = load_recipe("demo", [f"model.init={str(tmp_path / 'mit_b0.pth')!r}"])
    dataset = SimpleNamespace(classes=["a", "b", "c"], palette=np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.uint8))
    protocol = Protocol(scale=(96, 96))
    with pytest.warns(UserWarning, match="backbone-only"):
        model = build_model(recipe, dataset, protocol)
    assert model.num_classes == 3 and model.class_names == ["a", "b", "c"]
    assert model.config.palette == ((1, 2, 3), (4, 5, 6), (7, 8, 9))
    assert model.config.protocol == protocol
    for key, value in source.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(model.state_dict()[key], value), key


def test_auto_class_weights_are_counted_on_the_training_masks_and_written_into_the_runs_recipe(tmp_path):
    root = write_synthetic(tmp_path / "data", num_train=6, num_val=2, size=(64, 64), seed=3)
    recipe = tiny_recipe(root, {"schedule.iters": 2, "loss.class_weights": '"auto"'})
    train(recipe, tmp_path / "run", device="cpu", quiet=True)
    assert recipe.loss.class_weights == "auto"  # the caller's recipe is left as it was

    # oracle: median-frequency balancing (Eigen & Fergus 2015) from NumPy counts of the untransformed masks
    masks = [np.asarray(Image.open(path)) for path in sorted((root / "masks" / "train").glob("*.png"))]
    classes = 6
    pixels, images = np.zeros(classes), np.zeros(classes)
    for mask in masks:
        labelled = mask[mask != 255]
        for k in range(classes):
            if (labelled == k).any():
                pixels[k] += (labelled == k).sum()
                images[k] += labelled.size
    freq = pixels / images
    expected = np.median(freq) / freq
    written = load_recipe(tmp_path / "run" / "recipe.toml").loss.class_weights
    assert written == pytest.approx(expected.tolist(), rel=1e-5)  # 6 significant digits in the file
    assert len(set(written)) == classes  # real weights, not all ones


def test_effective_batch_far_from_the_published_one_is_warned_with_the_fix():
    assert trainer.batch_warning(2, 1, 1, 16) == (
        "effective batch 2 is far from the recipe's published 16: the published mIoU assumes 16; raise "
        "data.batch_size or accumulate (segformer train … --set accumulate=8)"
    )
    assert trainer.batch_warning(2, 8, 1, 16) is None  # the paper's 8 GPUs × 2
    assert trainer.batch_warning(8, 1, 1, 16) is None  # half is near enough
    assert trainer.batch_warning(1, 2, 2, 8) is None and trainer.batch_warning(2, 1, 1, 0) is None  # 0: none published
    assert trainer.batch_warning(2, 8, 4, 16).endswith(
        "lower data.batch_size or accumulate (segformer train … --set accumulate=1)"
    )
    assert trainer.batch_warning(40, 1, 1, 16).endswith("(segformer train … --set data.batch_size=16)")


def test_train_prints_the_effective_batch_and_warns_when_far_from_the_published(tmp_path, capsys):
    root = write_synthetic(tmp_path / "data", num_train=4, num_val=2, size=(64, 64), seed=0)
    recipe = tiny_recipe(
        root, {"schedule.iters": 1, "data.batch_size": 1, "accumulate": 2, "train.published_batch": 16}
    )
    with pytest.warns(UserWarning, match=r"effective batch 2 is far from the recipe's published 16") as caught:
        train(recipe, tmp_path / "run", device="cpu", quiet=True)
    assert [str(w.message) for w in caught if "effective batch" in str(w.message)] == [
        trainer.batch_warning(1, 1, 2, 16)
    ]
    assert "2 per step = 1 process(es) × 1 × 2 accumulated" in capsys.readouterr().out


def test_fp16_grad_scaler_scales_backward_unscales_before_clipping_and_skips_non_finite_steps(tmp_path):
    # a CPU GradScaler runs the same rule as CUDA's; fp16 autocast itself needs CUDA (tests/test_gpu_paths.py)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)
    images, masks = torch.randn(2, 3, 8, 8), torch.randint(0, 4, (2, 8, 8))
    loss = demo_loss(4)
    reference = copy.deepcopy(model)  # oracle: the unscaled gradient and a plain SGD step
    reference_loss = loss(reference(images), masks)
    reference_loss.backward()
    torch.optim.SGD(reference.parameters(), lr=0.1).step()

    backward_grads = []
    model.weight.register_hook(lambda grad: backward_grads.append(grad.clone()))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    options = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "scaler": scaler, "device": CPU}
    value = train_step(network=model, batches=[(images, masks)], loss=loss, **options)
    assert torch.equal(backward_grads[0], 2.0**12 * reference.weight.grad)  # backward ran on the scaled loss
    assert torch.equal(model.weight, reference.weight) and torch.equal(model.bias, reference.bias)  # unscaled step
    assert value.item() == reference_loss.item() and value.dtype == torch.float32  # the loss reported unscaled

    train_step(network=model, batches=[(images, masks)], loss=loss, clip_grad=1e-3, **options)
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)  # clipped after unscaling: the true norm, not × 4096

    before = copy.deepcopy(model.state_dict())
    inf_loss = train_step(network=model, batches=[(images, masks)], loss=lambda x, y: loss(x, y) * math.inf, **options)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # the step was skipped
    assert scaler.get_scale() == 2.0**11  # and the scale halved
    run = SimpleNamespace(dir=tmp_path)
    with pytest.raises(FloatingPointError, match="loss is inf at iteration 3"):  # and the trainer stops
        trainer.check_finite(run, inf_loss.item(), 3)


def test_the_loss_of_bf16_logits_is_computed_in_fp32():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)
    images, masks = torch.randn(2, 3, 8, 8), torch.randint(0, 4, (2, 8, 8))
    masks[0, :3] = 255
    loss, seen = demo_loss(4), {}

    def recording(logits, labels):
        seen["logits"], seen["loss"] = logits.detach(), loss(logits, labels)
        return seen["loss"]

    scaler = torch.amp.GradScaler("cpu", enabled=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(
        network=model,
        batches=[(images, masks)],
        optimizer=optimizer,
        scaler=scaler,
        device=CPU,
        loss=recording,
        amp_dtype=torch.bfloat16,
    )
    assert seen["logits"].dtype == torch.bfloat16 and seen["loss"].dtype == torch.float32
    expected = numpy_cross_entropy(seen["logits"].double().numpy(), masks.numpy(), None)
    assert seen["loss"].item() == pytest.approx(expected, rel=1e-6)  # bf16 arithmetic would be ~1e-3 off
    bf16_math = torch.nn.functional.cross_entropy(seen["logits"], masks, ignore_index=255, reduction="none").mean()
    assert abs(bf16_math.item() - expected) > 1e-5 * expected  # so the test can tell the two apart
