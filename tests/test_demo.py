"""``segformer demo``: its outputs, the held-out mIoU it prints against a NumPy recount, and its next commands."""

import contextlib
import json
import re
import shlex

import numpy as np
import pytest
from PIL import Image

import segformer.cli.demo as demo
from reference import numpy_miou
from segformer.cli import main
from segformer.config import TestProtocol as Protocol  # not collected as a test class
from segformer.data import build_dataset
from segformer.inference import Segmenter
from segformer.pretrained import from_pretrained
from segformer.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, one_thread):
    """The demo on 8 training and 3 held-out scenes, 3 iterations: (output folder, what it printed)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "NUM_TRAIN", 8)
        patch.setattr(demo, "NUM_VAL", 3)
        patch.setattr(demo, "NUM_OVERLAYS", 2)
        log = out.parent / "stdout.txt"
        with open(log, "w") as f, contextlib.redirect_stdout(f):
            assert main(["demo", "--out", str(out), "--iters", "3", "--device", "cpu", "--threads", "1"]) == 0
    return out, log.read_text()


def best_segmenter(out):
    """The demo's best weights tested with the protocol stored next to them (config.json), independently read."""
    config = json.loads((out / "run" / "best" / "config.json").read_text())
    return Segmenter(from_pretrained(out / "run" / "best"), Protocol.from_dict(config["protocol"]))


def test_demo_writes_its_outputs_and_reports_the_held_out_miou(demo_run):
    out, printed = demo_run
    recipe = load_recipe(out / "run" / "recipe.toml")
    assert recipe.schedule.iters == 3 and recipe.model.init == "" and recipe.model.variant == "b0"
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["00000.png", "00001.png"]
    assert Image.open(out / "run" / "curves.png").size == (1000, 400)

    held_out = build_dataset("custom", out / "data", "val")
    assert len(held_out) == 3
    segmenter = best_segmenter(out)
    assert segmenter.protocol.scale == tuple(recipe.data.test_scale) and segmenter.protocol.mode == "whole"
    images, labels = zip(*(held_out[i] for i in range(len(held_out))), strict=True)
    expected = numpy_miou([segmenter.predict(image) for image in images], list(labels), held_out.num_classes)
    reported = float(re.search(r"held-out mIoU ([0-9.]+)", printed).group(1))
    assert abs(reported - expected) < 6e-4
    assert str(out / "overlays") in printed and str(out / "run" / "curves.png") in printed
    # the final validation table is printed once (3 iterations: one validation, at the end), no raw reprs
    assert len(re.findall(r"^Class +IoU +Acc$", printed, re.M)) == 1
    assert "Segmenter(" not in printed and "PosixPath(" not in printed


def test_demo_overlays_show_truth_and_prediction_under_captions(demo_run):
    out, _ = demo_run
    panel = 2 * demo.SIZE  # the scenes are enlarged ×2
    picture = np.asarray(Image.open(out / "overlays" / "00000.png").convert("L"))
    band = int(np.argmax(picture[:, 0] < 250))  # white caption band above the (dark) scenes
    assert band > 0 and picture.shape[0] >= band + panel and picture.shape[1] >= 2 * panel + 8
    captions = picture[:band]
    for x in (0, panel + 8):  # dark caption text above each panel
        assert (captions[:, x : x + panel] < 128).sum() > 10


def test_demo_checks_the_device_before_writing_data(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cuda:99"]) == 1
    assert "--device cuda:99" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_the_printed_next_commands_work_verbatim(demo_run, capsys):
    out, printed = demo_run
    commands = [shlex.split(line.strip())[1:] for line in printed.splitlines() if line.startswith("  segformer ")]
    assert [c[0] for c in commands] == ["eval", "predict"]
    assert main(commands[0]) == 0
    evaluated = float(re.search(r"mIoU ([0-9.]+)", capsys.readouterr().out).group(1))
    reported = float(re.search(r"held-out mIoU ([0-9.]+)", printed).group(1))
    assert abs(evaluated - 100 * reported) < 0.5
    assert main(commands[1]) == 0
    segmenter, held_out = best_segmenter(out), build_dataset("custom", out / "data", "val")
    for index in range(len(held_out)):
        stem = held_out.image_path(index).stem
        label = np.asarray(Image.open(out / "predictions" / f"{stem}_label.png"))
        np.testing.assert_array_equal(label, segmenter.predict(held_out[index][0]))
