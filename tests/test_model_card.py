"""The model cards of best/ and last/: read by the Hugging Face hub's own parser, numbers from the validation."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import SegformerForSemanticSegmentation

import segformer.train as trainer
import segformer.training.run as trainer_run
from reference import numpy_counts, tiny_recipe
from segformer import Segmenter
from segformer.cli import build_parser, main
from segformer.config import SegFormerConfig
from segformer.data import DATASETS
from segformer.data.synthetic import write_synthetic
from segformer.pretrained import from_pretrained
from segformer.recipe import load_recipe
from segformer.train import train
from segformer.training.card import model_card

pytestmark = pytest.mark.usefixtures("one_thread")
TAGS = ["segformer", "semantic-segmentation", "image-segmentation", "pytorch"]


def split_card(text: str) -> tuple[dict, str]:
    """(front matter parsed by huggingface_hub's ModelCard, the Markdown body)."""
    card = ModelCard(text)
    return card.data.to_dict(), card.text


def iou_table(body: str) -> dict[str, float | None]:
    """The per-class rows of the card's results table."""
    lines = body.splitlines()
    start = lines.index("| class | IoU (%) |") + 2
    rows = {}
    for line in lines[start:]:
        name, value = (cell.strip() for cell in line.strip("|").split("|"))
        if name == "**mIoU**":
            return rows
        rows[name] = None if value == "n/a" else float(value)
    raise AssertionError("no mIoU row")


def card_commands(body: str, program: str) -> list[list[str]]:
    return [shlex.split(line)[1:] for line in body.splitlines() if line.startswith(f"{program} ")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("card")
    root = write_synthetic(folder / "data", num_train=4, num_val=3, size=(64, 64), seed=0)
    recipe = tiny_recipe(root, {"schedule.iters": 2, "schedule.val_interval": 2})
    train(recipe, folder / "run", device="cpu", quiet=True)
    return root, folder / "run"


@pytest.mark.parametrize("weights", ["best", "last"])
def test_a_trained_runs_card_parses_and_shows_the_last_validation(run, weights):
    root, run_dir = run
    meta, body = split_card((run_dir / weights / "README.md").read_text())
    validation = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert validation["iter"] == 2 and "IoU" in validation

    assert meta["library_name"] == "segformer" and meta["tags"] == TAGS and meta["metrics"] == ["mean_iou"]
    assert meta["pipeline_tag"] == "image-segmentation"
    assert "license" not in meta and "datasets" not in meta  # random init, custom data: nothing known to claim
    (result,) = ModelCard((run_dir / weights / "README.md").read_text()).data.eval_results
    assert (result.task_type, result.metric_type) == ("image-segmentation", "mean_iou")
    assert result.metric_value == round(100 * validation["mIoU"], 2)

    names = [line.split()[0] for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    table = iou_table(body)
    assert list(table) == names
    assert list(table.values()) == [None if v is None else round(100 * v, 2) for v in validation["IoU"]]
    assert f"**{100 * validation['mIoU']:.2f}**" in body
    assert "[recipe.toml](../recipe.toml)" in body and "at iteration 2 of 2" in body
    assert "sliding" not in body and "whole image, one forward pass" in body  # the custom protocol: whole, 64×64


def test_the_cards_iou_is_the_best_weights_own_iou(run):
    # oracle: the saved best weights predict the val images again; intersection / union counted with NumPy
    root, run_dir = run
    model = from_pretrained(run_dir / "best")
    segmenter = Segmenter(model)
    images = sorted((root / "images" / "val").glob("*.png"))
    predictions = [segmenter.predict(path) for path in images]
    labels = [np.asarray(Image.open(root / "masks" / "val" / path.name)) for path in images]
    intersection, union, _ = numpy_counts(predictions, labels, model.num_classes)
    table = iou_table(split_card((run_dir / "best" / "README.md").read_text())[1])
    expected = [round(100 * i / u, 2) if u else None for i, u in zip(intersection, union, strict=True)]
    assert list(table.values()) == expected


def test_the_cards_commands_load_the_weights_here_and_in_transformers(run, tmp_path):
    _, run_dir = run
    body = split_card((run_dir / "best" / "README.md").read_text())[1]
    folder = str(run_dir / "best")
    assert f'segformer.from_pretrained("{folder}")' in body
    for command in ("predict", "eval"):
        (args,) = [c for c in card_commands(body, "segformer") if c[0] == command]
        assert build_parser(command).parse_args(args[1:]).weights == folder
    (convert,) = [c for c in card_commands(body, "segformer") if c[0] == "convert"]
    assert convert == ["convert", folder, f"{folder}-hf", "--layout", "hf"]
    hf_folder = tmp_path / "hf"
    assert main(["convert", folder, str(hf_folder), "--layout", "hf"]) == 0
    assert f'SegformerForSemanticSegmentation.from_pretrained("{folder}-hf")' in body
    hf_model = SegformerForSemanticSegmentation.from_pretrained(hf_folder).eval()
    ours = from_pretrained(folder)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(pixel_values=images).logits, ours(images), rtol=1e-4, atol=1e-4)


def recipe_for(dataset: str, init: str = ""):
    name = {"ade20k": "ade20k-b0", "cityscapes": "cityscapes-b0", "coco-stuff": "coco-stuff-b0"}.get(dataset, "custom")
    return load_recipe(name, [f"model.init={init!r}", f"data.dataset={dataset}", "data.root='/data/x'"])


def card_for(dataset: str, init: str = "", validation: dict | None = None, root: str = "/data/x") -> str:
    info = DATASETS[dataset]
    classes = info.classes or ("background", "a|b", "c: d")
    config = SegFormerConfig("b0", len(classes), class_names=classes, protocol=info.protocol)
    recipe = recipe_for(dataset, init)
    recipe.data.root = root
    return model_card(config, recipe, folder=Path("runs/x/best"), iteration=10, validation=validation)


@pytest.mark.parametrize(
    "init",
    [
        "nvidia/mit-b0",
        "nvidia/segformer-b0-finetuned-ade-512-512",
        "/w/mit_b2.pth",
        "segformer.b0.512x512.ade.160k.pth",
    ],
)
def test_official_nvidia_weights_keep_their_licence(init):
    meta, body = split_card(card_for("ade20k", init))
    assert (meta["license"], meta["license_name"]) == ("other", "nvidia-source-code-license")
    assert meta["license_link"] == "https://github.com/NVlabs/SegFormer/blob/master/LICENSE"
    assert f"Trained from `{init}`, NVIDIA's official weights, which are under the NVIDIA Source Code License" in body


@pytest.mark.parametrize("init", ["", "/w/my_model.pth", "someone/mit-b0", "runs/old/best"])
def test_no_licence_is_claimed_for_other_weights(init):
    meta, body = split_card(card_for("custom", init))
    assert not {"license", "license_name", "license_link"} & set(meta) and "NVIDIA" not in body


def test_known_datasets_are_named_by_their_hub_ids_and_protocols_described():
    ade, _ = split_card(card_for("ade20k", validation={"iter": 10, "mIoU": 0.5, "mAcc": 0.6, "aAcc": 0.7}))
    assert ade["datasets"] == ["scene_parse_150"]
    assert ade["model-index"][0]["results"][0]["dataset"] == {
        "type": "scene_parse_150",
        "name": "ADE20K",
        "split": "val",
    }
    city, city_body = split_card(card_for("cityscapes"))
    assert city["datasets"] == ["cityscapes"] and "model-index" not in city  # no validation yet: no result
    assert "| mode | sliding windows of 1024×1024, stride 768×768 |" in city_body
    assert "| scale | keep-ratio resize to fit 2048×1024 (long × short side) |" in city_body
    assert "| size divisor | both sides then rounded to multiples of 32 |" in split_card(card_for("ade20k"))[1]
    assert "Not validated yet" in city_body
    for dataset in ("coco-stuff", "custom"):
        assert "datasets" not in split_card(card_for(dataset))[0]
    alias = recipe_for("ade20k")
    alias.data.dataset = "ADEChallengeData2016"  # a name the dataset registry resolves
    config = SegFormerConfig("b0", 150, protocol=DATASETS["ade20k"].protocol)
    meta, body = split_card(model_card(config, alias, folder=Path("best"), iteration=1))
    assert meta["datasets"] == ["scene_parse_150"] and "# SegFormer-B0 trained on ADE20K" in body


def test_odd_names_survive_the_front_matter_and_the_table():
    validation = {"iter": 10, "mIoU": 0.25, "mAcc": 0.5, "aAcc": 0.75, "IoU": [0.5, None, 0.0]}
    meta, body = split_card(card_for("custom", validation=validation, root='/d/my "data": v2'))
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == 'my "data": v2 (custom dataset)'
    assert iou_table(body) == {"background": 50.0, "a/b": None, "c: d": 0.0}


def test_a_resumed_run_writes_the_cards_an_uninterrupted_run_writes(tmp_path, monkeypatch):
    # checkpoints every iteration, validation every 2: the last/ card of iteration 3 shows the validation of
    # iteration 2, which a run resumed from iteration 2 knows only from metrics.jsonl
    root = write_synthetic(tmp_path / "data", num_train=4, num_val=2, size=(64, 64), seed=0)
    recipe = tiny_recipe(root, {"schedule.val_interval": 2, "schedule.ckpt_interval": 1})
    cards: dict[str, list[tuple[str, str]]] = {"straight": [], "resumed": []}
    original_write = trainer_run.write_model_card

    def recording(folder, text):
        run_name = folder.parent.name
        cards[run_name].append((folder.name, text.replace(str(folder.parent), "RUN")))
        original_write(folder, text)

    monkeypatch.setattr(trainer_run, "write_model_card", recording)
    train(recipe, tmp_path / "straight", device="cpu", quiet=True)
    original_step, calls = trainer.train_step, [0]

    def dying_step(**kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("killed during iteration 3")
        return original_step(**kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "train_step", dying_step)
        with pytest.raises(RuntimeError, match="killed"):
            train(recipe, tmp_path / "resumed", device="cpu", quiet=True)
    written_before = len(cards["resumed"])
    train(recipe, tmp_path / "resumed", resume=True, device="cpu", quiet=True)
    assert cards["resumed"][written_before:] == cards["straight"][written_before:]
    folder, third = cards["resumed"][written_before]  # the first card after resuming: last/ at iteration 3
    assert folder == "last" and "at iteration 3 of 4" in third and "Validation at iteration 2," in third
