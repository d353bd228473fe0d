"""Bulk ``segformer predict``: shards under torchrun, ``--skip-existing`` resume, the JSON-lines manifest."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segformer.cli import main
from segformer.inference import Segmenter

SCALE = ["--scale", "64", "32"]
NUM_IMAGES = 7


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(NUM_IMAGES):
        size = (36 + 3 * i, 50 - 2 * i, 3)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def reference(images, weights, tmp_path_factory) -> Path:
    """Outputs of one uninterrupted process."""
    out = tmp_path_factory.mktemp("single")
    assert main(["predict", str(images), "--weights", str(weights), "--out", str(out), *SCALE, "--quiet"]) == 0
    return out


def same_files(a: Path, b: Path) -> None:
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for path in a.iterdir():
        assert path.read_bytes() == (b / path.name).read_bytes(), path.name


def test_manifest_lists_every_input_with_its_class_areas(reference, images):
    lines = [json.loads(line) for line in (reference / "manifest.jsonl").read_text().splitlines()]
    assert [Path(line["input"]).name for line in lines] == [f"img{i}.png" for i in range(NUM_IMAGES)]
    for i, line in enumerate(lines):
        assert (line["label"], line["overlay"]) == (f"img{i}_label.png", f"img{i}_overlay.png")
        label = np.array(Image.open(reference / line["label"]))
        assert (line["height"], line["width"]) == (36 + 3 * i, 50 - 2 * i) == label.shape
        areas = {name: int((label == k).sum()) for k, name in enumerate(["sky", "road", "tree"])}
        assert line["class_pixels"] == {name: area for name, area in areas.items() if area}
        assert sum(line["class_pixels"].values()) == line["height"] * line["width"]


def test_two_torchrun_processes_write_the_same_files_as_one(images, weights, reference, tmp_path):
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = launcher + ["-m", "segformer.cli", "predict", str(images), "--weights", str(weights), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd + SCALE, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    same_files(reference, out)
    summaries = [line for line in result.stdout.splitlines() if line.startswith("wrote ")]
    assert len(summaries) == 1 and summaries[0].startswith(f"wrote {NUM_IMAGES} label maps and overlays")


def test_rank_takes_every_nth_input(images, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: None)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: None)
    assert main(["predict", str(images), "--weights", str(weights), "--out", str(tmp_path), *SCALE, "--quiet"]) == 0
    written = sorted(p.name for p in tmp_path.glob("*_label.png"))
    assert written == ["img1_label.png", "img4_label.png"]  # inputs 1, 1 + 3, (7 is past the end)


def test_killed_run_resumes_with_skip_existing(images, weights, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["predict", str(images), "--weights", str(weights), "--out", str(out), *SCALE, "--quiet"]
    real_predict, calls = Segmenter.predict_batch, []

    def killed_after_three(self, batch):
        calls.append(len(batch))
        if len(calls) > 3:
            raise KeyboardInterrupt  # Ctrl-C, or a kill, after three images
        return real_predict(self, batch)

    monkeypatch.setattr(Segmenter, "predict_batch", killed_after_three)
    assert main(argv) == 130
    assert len(list(out.glob("*_label.png"))) == 3 and not (out / "manifest.jsonl").exists()
    calls.clear()
    monkeypatch.setattr(
        Segmenter, "predict_batch", lambda self, batch: calls.append(len(batch)) or real_predict(self, batch)
    )
    capsys.readouterr()
    assert main(argv + ["--skip-existing"]) == 0
    assert len(calls) == NUM_IMAGES - 3  # only the missing ones were predicted
    assert "skipped 3 inputs with existing outputs" in capsys.readouterr().out
    same_files(reference, out)  # label maps, overlays and manifest byte-identical to an uninterrupted run


def manifest_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_runs_into_one_folder_keep_every_runs_manifest_lines(images, weights, reference, tmp_path):
    out, expected = tmp_path / "out", manifest_lines(reference)  # expected[i]: img{i}.png

    def predict(*names, folder=images):
        argv = ["predict", *(str(folder / name) for name in names), "--weights", str(weights), "--out", str(out)]
        assert main(argv + [*SCALE, "--quiet"]) == 0
        return manifest_lines(out)

    assert predict("img0.png", "img1.png") == [expected[0], expected[1]]
    assert predict("img3.png", "img2.png") == [expected[0], expected[1], expected[3], expected[2]]
    # A rerun of an input replaces its line (this run's lines come last, in input order), with or without resume.
    assert predict("img1.png") == [expected[0], expected[3], expected[2], expected[1]]
    assert main(["predict", str(images / "img3.png"), "--weights", str(weights), "--out", str(out), *SCALE,
                 "--quiet", "--skip-existing"]) == 0  # fmt: skip
    assert manifest_lines(out) == [expected[0], expected[2], expected[1], expected[3]]
    # Another input written to the same outputs replaces the line of the one it overwrote.
    other = tmp_path / "other"
    other.mkdir()
    (other / "img0.png").write_bytes((images / "img5.png").read_bytes())
    replaced = {**expected[5], "input": str(other / "img0.png"), "label": "img0_label.png"}
    replaced["overlay"] = "img0_overlay.png"
    assert predict("img0.png", folder=other) == [expected[2], expected[1], expected[3], replaced]


def test_unreadable_manifest_is_refused_before_any_prediction(images, weights, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text('{"input": "a.png"}\nnot json\n')
    argv = ["predict", str(images), "--weights", str(weights), "--out", str(out), *SCALE, "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(out / "manifest.jsonl") in err and "line 2" in err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl"]


@pytest.mark.parametrize("device_flag", [[], ["--device", "cuda"]])
def test_torchrun_rank_predicts_on_gpu_local_rank(device_flag, images, weights, tmp_path, monkeypatch):
    """A stand-in for two GPUs: rank 1 of 2 must load the model onto cuda:1 and make it the current device."""
    current, groups = [], []
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: groups.append((a, k)))

    class ModelLoaded(Exception):
        pass

    def load_for_inference(weights, device, *args):
        raise ModelLoaded(device)

    monkeypatch.setattr("segformer.engines.load_for_inference", load_for_inference)
    with pytest.raises(ModelLoaded) as loaded:
        main(["predict", str(images), "--weights", str(weights), "--out", str(tmp_path), *device_flag])
    assert loaded.value.args[0] == torch.device("cuda", 1)
    assert current == [1]
    assert groups == [(("gloo",), {"device_id": None})]


def test_local_device_takes_local_rank_only_under_torchrun(monkeypatch):
    from segformer.distributed import local_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_device("cuda") == torch.device("cuda", 0) and current == [0]  # no torchrun: the current GPU
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_device(None) == torch.device("cuda", 1) and current == [0, 1]
    assert local_device("cuda:0") == torch.device("cuda", 0) and current == [0, 1, 0]  # an index given is kept
    assert local_device("cpu") == torch.device("cpu") and current == [0, 1, 0]
