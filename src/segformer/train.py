"""The trainer: the official SegFormer recipe (SPEC §4), on one process or many under ``torchrun``.

``train(recipe, run_dir)`` reads top to bottom: set up processes, data, model and optimiser (or
resume them from ``RUN_DIR/last.pt``), then run iterations of poly-scheduled AdamW on
cross-entropy, validating with the dataset's test protocol and checkpointing as the recipe says.

A run directory holds ``recipe.toml`` (the resolved recipe), ``metrics.jsonl`` (one JSON record per
log or validation), ``curves.png``, TensorBoard events when tensorboard is installed, ``last.pt``
and ``best.pt`` (full training states) and ``best/`` (the best weights, ``from_pretrained`` layout).
Only rank 0 writes files and shows the progress bar.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from segformer.constants import IGNORE_INDEX
from segformer.fileio import atomic_write
from segformer.model import SegFormer, create_model
from segformer.recipe import Recipe, dump_recipe
from segformer.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from segformer.training.data import build_train_loader
from segformer.training.distributed import (
    Distributed,
    all_reduce_mean,
    close_distributed,
    convert_sync_batchnorm,
    gather_objects,
    init_distributed,
)
from segformer.training.optim import build_optimizer, set_lr
from segformer.training.runlog import RunLog
from segformer.transforms import train_transforms


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None (fp32) where the device lacks it, with a warning."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            warnings.warn(f"{device} does not support bf16: training in fp32", stacklevel=2)
            return None
        return torch.bfloat16
    if device.type != "cuda":
        warnings.warn(f"fp16 mixed precision needs a CUDA device, not {device}: training in fp32", stacklevel=2)
        return None
    return torch.float16


def build_model(recipe: Recipe, classes: list[str], load_init: bool = True) -> SegFormer:
    """SegFormer per ``recipe.model``: weights from ``model.init`` when set (and ``load_init``), else random."""
    cfg = recipe.model
    if cfg.num_classes and cfg.num_classes != len(classes):
        raise ValueError(
            f"model.num_classes = {cfg.num_classes} but the {recipe.data.dataset} dataset has {len(classes)} "
            "classes (set model.num_classes = 0 to take them from the dataset)"
        )
    options = {"drop_path_rate": cfg.drop_path_rate, "decoder_dropout": cfg.decoder_dropout, "class_names": classes}
    if cfg.init and load_init:
        from segformer.pretrained import from_pretrained

        return from_pretrained(cfg.init, variant=cfg.variant, num_classes=len(classes), **options)
    return create_model(cfg.variant, len(classes), **options)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of logits resized bilinearly (align_corners False) to the label size, ignoring 255.

    As mmseg's ``CrossEntropyLoss`` (``avg_non_ignore=False``), the per-pixel losses (× class weight)
    are averaged over all pixels, ignored ones counting as zero.
    """
    logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, masks, weight=class_weights, ignore_index=IGNORE_INDEX, reduction="none")
    return loss.mean()


def train_step(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """One optimiser step over ``batches`` (gradient accumulation); returns their mean loss (detached).

    Under DDP the gradients are all-reduced only after the last micro-batch.
    """
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for i, (images, masks) in enumerate(batches):
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        last = i == len(batches) - 1
        no_sync = isinstance(model, DistributedDataParallel) and not last
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
            loss = segmentation_loss(logits, masks, class_weights)
            scaler.scale(loss / len(batches)).backward()
        total += loss.detach()
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    return total / len(batches)


def validate(model: SegFormer, recipe: Recipe, dataset, progress: bool) -> dict:
    """Metrics of ``model`` on ``dataset`` with the dataset's test protocol at ``data.test_scale``."""
    from segformer.evaluate import evaluate
    from segformer.inference import Segmenter

    segmenter = Segmenter.for_dataset(model, dataset_key(recipe), scale=tuple(recipe.data.test_scale))
    try:
        return evaluate(segmenter, dataset, progress=progress)
    finally:
        model.train()


def dataset_key(recipe: Recipe) -> str:
    from segformer.data import canonical_name

    return canonical_name(recipe.data.dataset)


def build_datasets(recipe: Recipe) -> tuple:
    """(train, val) datasets of ``recipe.data``, untransformed."""
    from segformer.data import build_dataset

    if not recipe.data.root:
        raise ValueError("data.root is empty: pass --data-root DIR (or --set data.root=DIR)")
    key = dataset_key(recipe)
    options = recipe.data.options
    return (
        build_dataset(key, recipe.data.root, "train", **options),
        build_dataset(key, recipe.data.root, "val", **options),
    )


def training_state(
    model: SegFormer,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    iteration: int,
    micro_batches: int,
    best: dict,
    env: Distributed,
) -> dict:
    """Everything ``--resume`` needs; gathers the RNG states of all processes (call on every rank)."""
    return {
        "iteration": iteration,
        "micro_batches": micro_batches,
        "world_size": env.world_size,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "best": dict(best),
        "rng": gather_objects(rng_state()),
    }


def train(recipe: Recipe, run_dir: str | Path, resume: bool = False, device: str | None = None) -> dict:
    """Train a SegFormer as ``recipe`` says, writing the run into ``run_dir``.

    Args:
        recipe: a loaded recipe (``segformer.recipe.load_recipe``).
        run_dir: output folder.
        resume: continue the run in ``run_dir`` from its ``last.pt``, exactly where it stopped.
        device: "cuda", "cpu", "cuda:1" …; default CUDA when available. Under torchrun each process
            takes GPU LOCAL_RANK.

    Returns:
        Summary: ``best_miou``, ``best_iteration``, ``iterations`` and the final validation ``metrics``.

    Raises:
        FloatingPointError: the loss became NaN or infinite (the message names the iteration; the last
            good checkpoint stays in ``run_dir``).
    """
    env = init_distributed(device)
    try:
        return _train(recipe, Path(run_dir), resume, env)
    finally:
        close_distributed()


def _train(recipe: Recipe, run_dir: Path, resume: bool, env: Distributed) -> dict:
    # --- the state to resume ----------------------------------------------------------------------
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    state = None
    if resume:
        state = load_checkpoint(last_path)
    elif last_path.exists():
        raise ValueError(f"{run_dir} already holds a run (last.pt): resume it with --resume {run_dir} or pick --out")

    # --- data -------------------------------------------------------------------------------------
    train_set, val_set = build_datasets(recipe)
    data = recipe.data
    transform = train_transforms(
        data.crop, data.scale, data.ratio_range, data.cat_max_ratio, data.flip_prob, data.photometric
    )

    # --- model: same initial weights on every rank, then per-rank randomness --------------------------
    seed_everything(recipe.seed)
    model = build_model(recipe, train_set.classes, load_init=state is None).to(env.device)
    if env.world_size > 1:
        model.decode_head = convert_sync_batchnorm(model.decode_head, env.device)
    seed_everything(recipe.seed + env.rank)
    optim = recipe.optim
    optimizer = build_optimizer(model, optim.lr, tuple(optim.betas), optim.weight_decay, optim.head_lr_mult)
    amp_dtype = autocast_dtype(recipe.precision, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=amp_dtype == torch.float16)
    class_weights = None
    if recipe.loss.class_weights:
        if len(recipe.loss.class_weights) != model.num_classes:
            raise ValueError(
                f"loss.class_weights has {len(recipe.loss.class_weights)} values for {model.num_classes} classes"
            )
        class_weights = torch.tensor(recipe.loss.class_weights, dtype=torch.float32, device=env.device)

    if env.is_main:  # written once data and weights are found, so a misconfigured run leaves nothing behind
        run_dir.mkdir(parents=True, exist_ok=True)
        text = dump_recipe(recipe, f"resolved recipe of the run in {run_dir}")
        atomic_write(run_dir / "recipe.toml", lambda tmp: Path(tmp).write_text(text))

    start, best = 0, {"mIoU": float("nan"), "iteration": 0}
    if state is not None:
        if state["world_size"] != env.world_size:
            warnings.warn(
                f"{last_path}: saved with {state['world_size']} processes, resumed with {env.world_size}: "
                "the data order continues but random streams are reseeded",
                stacklevel=2,
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, best = state["iteration"], state["best"]
        if state["world_size"] == env.world_size:
            set_rng_state(state["rng"][env.rank])
    net = model
    if env.world_size > 1:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)

    accumulate = recipe.accumulate
    loader = build_train_loader(
        train_set,
        transform,
        data.batch_size,
        seed=recipe.seed,
        rank=env.rank,
        world_size=env.world_size,
        start=state["micro_batches"] if state else 0,
        workers=data.workers,
        pin_memory=env.device.type == "cuda",
    )
    batches = iter(loader)
    log = RunLog(run_dir, env.is_main, start if state else None)
    schedule = recipe.schedule
    lr_schedule = {
        "power": optim.power,
        "min_lr": optim.min_lr,
        "warmup_iters": optim.warmup_iters,
        "warmup_ratio": optim.warmup_ratio,
    }
    if env.is_main:
        images = data.batch_size * env.world_size * accumulate
        print(
            f"training SegFormer-{recipe.model.variant.upper()} on {len(train_set)} {data.dataset} images "
            f"({images} per step = {env.world_size} process(es) × {data.batch_size} × {accumulate} accumulated), "
            f"{schedule.iters} iterations on {env.device}; run folder {run_dir}"
            + (f", resumed at iteration {start}" if state else "")
        )

    # --- the loop ---------------------------------------------------------------------------------------
    model.train()
    bar = tqdm(total=schedule.iters, initial=start, desc="train", unit="it", disable=not env.is_main)
    losses, metrics, tic = [], None, time.perf_counter()
    for it in range(start, schedule.iters):
        lr = set_lr(optimizer, it, schedule.iters, **lr_schedule)
        step_batches = [next(batches) for _ in range(accumulate)]
        loss = all_reduce_mean(
            train_step(net, step_batches, optimizer, scaler, env.device, amp_dtype, recipe.clip_grad, class_weights)
        ).item()
        done = it + 1
        if not math.isfinite(loss):
            kept = f"the last good checkpoint is {last_path}" if last_path.exists() else "no checkpoint was written"
            raise FloatingPointError(
                f"loss is {loss} at iteration {done}: stopping ({kept}; lower optim.lr, set clip_grad, "
                'or use precision = "bf16" instead of fp16)'
            )
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")

        if done % max(schedule.log_interval, 1) == 0 or done == schedule.iters:
            elapsed = time.perf_counter() - tic
            log.log({"iter": done, "loss": sum(losses) / len(losses), "lr": lr, "sec_per_iter": elapsed / len(losses)})
            losses, tic = [], time.perf_counter()

        if (schedule.val_interval and done % schedule.val_interval == 0) or done == schedule.iters:
            metrics = validate(model, recipe, val_set, progress=env.is_main)
            improved = not metrics["mIoU"] <= best["mIoU"]  # the first result always counts (best starts NaN)
            if improved:
                best = {"mIoU": float(metrics["mIoU"]), "iteration": done}
            if env.is_main:
                from segformer.metrics import format_table

                tqdm.write(f"validation at iteration {done}:\n{format_table(metrics, model.class_names)}")
                log.log({"iter": done, **{k: float(metrics[k]) for k in ("mIoU", "mAcc", "aAcc")}})
                log.plot()
            if improved:
                checkpoint = training_state(model, optimizer, scaler, done, done * accumulate, best, env)
                if env.is_main:
                    save_checkpoint(best_path, checkpoint)
                    model.save_pretrained(str(run_dir / "best"))

        if (schedule.ckpt_interval and done % schedule.ckpt_interval == 0) or done == schedule.iters:
            checkpoint = training_state(model, optimizer, scaler, done, done * accumulate, best, env)
            if env.is_main:
                save_checkpoint(last_path, checkpoint)
    bar.close()
    log.plot()
    log.close()

    summary = {
        "run_dir": str(run_dir),
        "iterations": schedule.iters,
        "best_miou": best["mIoU"],
        "best_iteration": best["iteration"],
        "metrics": metrics,
    }
    if env.is_main:
        print(
            f"done: best mIoU {best['mIoU']:.4f} at iteration {best['iteration']}: {best_path} "
            f"(weights for segformer eval/predict --weights: {run_dir / 'best'}); last: {last_path}; "
            f"curves: {log.curves}"
        )
    return summary
