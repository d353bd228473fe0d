"""``segformer eval`` and ``evaluate``: mIoU against a NumPy reference, one process and two (torchrun, gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reference import numpy_counts
from segformer import create_model, evaluate, from_pretrained
from segformer.cli import main
from segformer.config import TestProtocol as Protocol  # aliased: pytest would collect a "Test…" class
from segformer.data import build_dataset, write_synthetic
from segformer.inference import Segmenter

SIZE = (40, 56)
NUM_VAL = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_synthetic(tmp_path_factory.mktemp("data"), 0, NUM_VAL, size=SIZE, seed=0)
    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("model")
    create_model("b0", num_classes=6).save_pretrained(weights)
    return root, weights


def eval_args(root: Path, weights: Path, out: Path) -> list[str]:
    data = ["--dataset", "custom", "--data-root", str(root), "--scale", "56", "40"]
    return ["eval", "--weights", str(weights), *data, "--device", "cpu", "--out", str(out)]


def reference_metrics(root: Path, weights: Path) -> tuple[float, float, np.ndarray]:
    """mIoU, aAcc and per-class IoU from Segmenter.predict and the masks, counted with NumPy."""
    dataset = build_dataset("custom", root, "val")
    segmenter = Segmenter(from_pretrained(weights), Protocol(scale=(56, 40)))
    images, masks = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    intersect, union, labelled = numpy_counts([segmenter.predict(image) for image in images], masks, 6)
    with np.errstate(invalid="ignore"):
        iou = intersect / union  # NaN for a class neither labelled nor predicted
    return float(np.nanmean(iou)), intersect.sum() / labelled.sum(), iou


def test_eval_cli_matches_numpy_reference(setup, tmp_path, capsys):
    root, weights = setup
    out = tmp_path / "results.json"
    assert main(eval_args(root, weights, out)) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    miou, aacc, iou = reference_metrics(root, weights)
    assert results["num_images"] == NUM_VAL
    assert results["summary"]["mIoU"] == pytest.approx(miou, abs=1e-12)
    assert results["summary"]["aAcc"] == pytest.approx(aacc, abs=1e-12)
    got = np.array([np.nan if c["IoU"] is None else c["IoU"] for c in results["per_class"]])
    np.testing.assert_allclose(got, iou, atol=1e-12)
    assert [c["class"] for c in results["per_class"]] == ["background", "disc", "square", "triangle", "ring", "cross"]
    assert f"mIoU {miou * 100:.2f}" in printed


def test_evaluate_function_on_a_subset(setup):
    root, weights = setup
    dataset = build_dataset("custom", root, "val")
    segmenter = Segmenter(from_pretrained(weights), Protocol(scale=(56, 40)))
    image, mask = dataset[1]
    pred = segmenter.predict(image)
    results = evaluate(segmenter, torch.utils.data.Subset(dataset, [1]), progress=False)
    valid = mask != 255
    assert results["aAcc"] == pytest.approx((pred == mask)[valid].mean(), abs=1e-12)


def test_two_processes_give_the_same_metrics(setup, tmp_path):
    root, weights = setup
    single, double = tmp_path / "single.json", tmp_path / "double.json"
    assert main(eval_args(root, weights, single)) == 0
    script = str(Path(sys.executable).with_name("segformer"))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        launcher + eval_args(root, weights, double), capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert two["summary"] == one["summary"] and two["per_class"] == one["per_class"]
    assert result.stdout.count("mIoU") == 1  # only rank 0 prints


def test_class_count_mismatch_is_a_clean_error(setup, tmp_path, capsys):
    root, _ = setup
    weights = tmp_path / "model"
    create_model("b0", num_classes=4).save_pretrained(weights)
    assert main(eval_args(root, weights, tmp_path / "r.json")) == 1
    assert "4 classes" in capsys.readouterr().err
