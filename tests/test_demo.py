"""``segformer demo``: its outputs, the held-out mIoU it prints against a NumPy recount, and its next commands."""

import contextlib
import json
import re
import shlex

import numpy as np
import pytest
from PIL import Image

import segformer.cli.demo as demo
import segformer.cores as cores
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


# /proc/stat as proc(5) documents it: "cpuN user nice system idle iowait irq softirq steal guest guest_nice".
STAT_BEFORE = """cpu  300 0 100 1000 20 0 0 0 0 0
cpu0 100 0 50 500 10 0 0 0 0 0
cpu1 200 0 50 500 10 0 0 0 0 0
cpu2 900 0 50 100 0 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""
# 100 ticks later on each CPU: cpu0 idle for 90 of them (80 idle + 10 iowait), cpu1 for 20, cpu2 for 0
STAT_AFTER = """cpu  0 0 0 0 0 0 0 0 0 0
cpu0 105 0 55 580 20 0 0 0 40 0
cpu1 270 0 60 520 10 0 0 0 0 0
cpu2 1000 0 50 100 0 0 0 0 0 0
"""


def test_cpu_ticks_sum_idle_and_iowait_of_the_cpus_asked_for():
    assert cores.cpu_ticks(STAT_BEFORE) == (500 + 10 + 500 + 10 + 100, 660 + 760 + 1050)
    assert cores.cpu_ticks(STAT_BEFORE, {0, 2}) == (610, 660 + 1050)  # the aggregate "cpu" line is not a CPU
    assert cores.cpu_ticks(STAT_AFTER, [1]) == (530, 860)  # guest ticks (cpu0) are already in user: not summed
    with pytest.raises(ValueError, match=r"/proc/stat: no per-CPU 'cpuN' line for CPUs \[7\]"):
        cores.cpu_ticks(STAT_BEFORE, {7})


@pytest.mark.parametrize(("cpus", "idle"), [({0, 1}, 2 * (90 + 20) / 200), ({0}, 0.9), ({1, 2}, 2 * 20 / 200)])
def test_idle_cores_over_a_window(tmp_path, monkeypatch, cpus, idle):
    stat = tmp_path / "stat"
    stat.write_text(STAT_BEFORE)
    monkeypatch.setattr(cores, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(cores.time, "sleep", lambda seconds: stat.write_text(STAT_AFTER))  # the window passes
    assert cores.idle_cores(0.5, str(stat)) == pytest.approx(idle)
    assert cores.idle_cores(0.5, str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    ("cores_", "idle", "load", "threads"),
    [
        (2, 1.97, 3.4, 2),  # idle now, load average still high from the pip install before: the idle share counts
        (2, 1.02, 1.0, 1),  # another process busy on one core
        (2, 0.1, 2.0, 1),  # all busy: never fewer than one thread
        (8, 5.6, None, 6),  # rounded to the nearest core
        (8, 5.4, None, 5),
        (4, 4.0, None, 4),
        (8, None, 2.6, 5),  # /proc/stat unreadable: cores minus the 1-minute load
        (2, None, 7.0, 1),
        (4, None, None, 4),  # nothing known: every core
        (3, 6.0, None, 3),  # never more than the cores given
    ],
)
def test_threads_for_idle(cores_, idle, load, threads):
    assert cores.threads_for_idle(cores_, idle, load) == threads


def test_demo_threads_follow_threads_then_omp_num_threads_then_idle_cores(monkeypatch):
    import torch

    asked = []
    monkeypatch.setattr(demo, "idle_threads", lambda most: asked.append(most) or 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert demo.demo_threads(2) == 2
    assert demo.demo_threads(None) is None  # torch's own choice, which follows OMP_NUM_THREADS
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert demo.demo_threads(None) == 1 and asked == [torch.get_num_threads()]
