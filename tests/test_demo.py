"""``segformer demo``: its outputs, and the held-out mIoU it prints against a NumPy recount."""

import re

import numpy as np
import torch
from PIL import Image

import segformer.cli.demo as demo
from segformer.cli import main
from segformer.data import build_dataset
from segformer.inference import Segmenter
from segformer.pretrained import from_pretrained
from segformer.recipe import load_recipe

torch.set_num_threads(1)


def numpy_miou(predictions: list[np.ndarray], labels: list[np.ndarray], num_classes: int) -> float:
    """mmseg mIoU: whole-set intersection / union per class, mean over classes with a non-zero union."""
    intersection, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, label in zip(predictions, labels, strict=True):
        keep = label != 255
        for k in range(num_classes):
            p, t = (pred == k) & keep, (label == k) & keep
            intersection[k] += (p & t).sum()
            union[k] += (p | t).sum()
    present = union > 0
    return float((intersection[present] / union[present]).mean())


def test_demo_writes_its_outputs_and_reports_the_held_out_miou(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "NUM_TRAIN", 8)
    monkeypatch.setattr(demo, "NUM_VAL", 3)
    monkeypatch.setattr(demo, "NUM_OVERLAYS", 2)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iters", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out

    recipe = load_recipe(out / "run" / "recipe.toml")
    assert recipe.schedule.iters == 3 and recipe.model.init == "" and recipe.model.variant == "b0"
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["00000.png", "00001.png"]
    assert Image.open(out / "run" / "curves.png").size == (1000, 400)

    held_out = build_dataset("custom", out / "data", "val")
    assert len(held_out) == 3
    segmenter = Segmenter.for_dataset(from_pretrained(out / "run" / "best"), "custom", scale=recipe.data.test_scale)
    images, labels = zip(*(held_out[i] for i in range(len(held_out))), strict=True)
    expected = numpy_miou([segmenter.predict(image) for image in images], list(labels), held_out.num_classes)
    reported = float(re.search(r"held-out mIoU ([0-9.]+)", printed).group(1))
    assert abs(reported - expected) < 6e-4
    assert str(out / "overlays") in printed and str(out / "run" / "curves.png") in printed
