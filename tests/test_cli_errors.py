"""User errors get one line ``segformer CMD: error: ...`` and a non-zero exit; bugs keep their traceback."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segformer import create_model, from_pretrained
from segformer.cli import build_parser, main
from segformer.data import write_synthetic
from segformer.inference import Segmenter

SCALE = ["--scale", "64", "32"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    create_model("b0", num_classes=6).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data"), 0, 2, size=(40, 56), seed=0)


def run_cli(argv: list[str]) -> int:
    """``main(argv)``, with argparse's exit turned into the returned code."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"segformer {command}: "), err
    return lines[0]


def test_predict_out_is_an_existing_file(images, weights, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    assert main(["predict", str(images), "--weights", str(weights), "--out", str(target), *SCALE]) == 1
    line = one_error_line(capsys.readouterr().err, "predict")
    assert str(target) in line and "not a folder" in line
    assert target.read_text() == "x"


def test_convert_to_an_existing_file(weights, tmp_path, capsys):
    target = tmp_path / "model.bin"
    target.write_text("x")
    assert main(["convert", str(weights), str(target)]) == 1
    line = one_error_line(capsys.readouterr().err, "convert")
    assert str(target) in line and "not a folder" in line


def device_commands(images: Path, weights: Path, data: Path, out: Path) -> dict[str, list[str]]:
    dataset = ["--dataset", "custom", "--data-root", str(data), "--scale", "56", "40"]
    return {
        "predict": ["predict", str(images), "--weights", str(weights), "--out", str(out), *SCALE],
        "eval": ["eval", "--weights", str(weights), *dataset],
        "benchmark": ["benchmark", "--sizes", "64x64", "--repeats", "1", "--warmup", "0", "--no-memory"],
        "export": ["export", str(out / "m.onnx"), "--weights", str(weights)],
        "convert": ["convert", str(weights), str(out / "converted")],
    }


@pytest.mark.parametrize("command", ["predict", "eval", "benchmark", "export", "convert"])
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "tpu"])
def test_unavailable_or_unknown_device(command, device, images, weights, data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only torch, also on a GPU machine
    argv = device_commands(images, weights, data, tmp_path)[command] + ["--device", device]
    assert run_cli(argv) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and device in err, err
    if command in ("predict", "eval", "benchmark"):  # export and convert run on the CPU and have no --device
        line = one_error_line(err, command)
        assert "CUDA is not available" in line if device.startswith("cuda") else "not a device" in line
    assert not (tmp_path / "converted").exists() and not (tmp_path / "m.onnx").exists()


def test_compare_hf_without_transformers_names_the_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    argv = ["benchmark", "--compare-hf", "--sizes", "64x64", "--repeats", "1", "--warmup", "0", "--no-memory"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    line = one_error_line(captured.err, "benchmark")
    assert "'transformers'" in line and "pip install transformers" in line
    assert "measured" not in captured.out + captured.err  # failed before measuring anything


def test_internal_import_errors_and_bugs_keep_their_traceback(images, weights, tmp_path, monkeypatch):
    def broken(self, images):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Segmenter, "predict_batch", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["predict", str(images), "--weights", str(weights), "--out", str(tmp_path), *SCALE])

    def missing(self, images):
        raise ModuleNotFoundError("No module named 'segformer.gone'", name="segformer.gone")

    monkeypatch.setattr(Segmenter, "predict_batch", missing)
    with pytest.raises(ModuleNotFoundError):
        main(["predict", str(images), "--weights", str(weights), "--out", str(tmp_path), *SCALE])


def test_ctrl_c_is_one_line_and_exit_130(images, weights, tmp_path, monkeypatch, capsys):
    def interrupted(self, images):
        raise KeyboardInterrupt

    monkeypatch.setattr(Segmenter, "predict_batch", interrupted)
    assert main(["predict", str(images), "--weights", str(weights), "--out", str(tmp_path), *SCALE]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["segformer predict: interrupted"]


def test_bare_command_prints_usage_to_stderr_and_exits_2():
    bare = subprocess.run([sys.executable, "-m", "segformer"], capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and bare.stdout == ""
    assert bare.stderr.startswith("usage: segformer COMMAND") and "check-data" in bare.stderr
    helped = subprocess.run([sys.executable, "-m", "segformer.cli", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: segformer COMMAND")


def test_predict_singular_output_line_quiet_and_threads(images, weights, tmp_path, capsys):
    previous = torch.get_num_threads()
    try:
        argv = ["predict", str(images / "a.png"), "--weights", str(weights), "--out", str(tmp_path), *SCALE]
        assert main(argv + ["--threads", "1", "--quiet"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: no progress
    assert f"wrote 1 label map and overlay to {tmp_path} (whole image, scale 64×32; torch fp32)" in captured.out
    assert "Segmenter(" not in captured.out
    assert run_cli(argv + ["--threads", "0"]) == 2
    assert "--threads: expected a number >= 1, got 0" in capsys.readouterr().err


def test_predict_progress_lines_in_a_log(images, weights, tmp_path, capsys):
    assert main(["predict", str(images), "--weights", str(weights), "--out", str(tmp_path), *SCALE]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 label maps and overlays" in captured.out
    progress = captured.err.strip().splitlines()  # not a terminal: plain lines, no carriage returns
    assert progress[-1].startswith("predict: 3/3 image") and "\r" not in captured.err


def test_eval_show_dir_writes_truth_and_prediction_overlays(data, weights, tmp_path, capsys):
    show = tmp_path / "show"
    dataset = ["--dataset", "custom", "--data-root", str(data), "--scale", "56", "40"]
    assert main(["eval", "--weights", str(weights), *dataset, "--show-dir", str(show), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert sorted(p.name for p in show.iterdir()) == ["00000.png", "00001.png"]
    segmenter = Segmenter(from_pretrained(weights), scale=(56, 40))
    image = np.array(Image.open(data / "images" / "val" / "00001.png").convert("RGB"))
    mask = np.array(Image.open(data / "masks" / "val" / "00001.png"))
    palette = np.array(Image.open(data / "masks" / "val" / "00001.png").getpalette()[:18], np.uint8).reshape(6, 3)
    canvas = np.array(Image.open(show / "00001.png"))
    places = []
    for label in (mask, segmenter.predict(image)):
        expected = np.round(0.5 * image + 0.5 * palette[label]).astype(np.uint8)  # cv2 and NumPy round halves alike
        found = [
            (y, x)
            for y in range(canvas.shape[0] - 40)
            for x in range(canvas.shape[1] - 55)
            if np.array_equal(canvas[y : y + 40, x : x + 56], expected)
        ]
        assert len(found) == 1
        places.append(found[0])
    (y_truth, x_truth), (y_pred, x_pred) = places
    assert y_truth == y_pred > 0 and x_pred > x_truth  # side by side, under the captions
    assert (canvas[:y_truth] < 128).any()  # caption text above the panels


def test_onnx_export_without_onnxscript_names_the_extra(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", str(tmp_path / "m.onnx"), "--weights", str(weights)]) == 1
    line = one_error_line(capsys.readouterr().err, "export")
    assert "onnxscript" in line and "pip install 'segformer[export]'" in line
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("command", ["demo", "serve", "train", "predict"])
def test_shared_flags_mean_the_same_in_every_command(command, capsys):
    """``--threads``, ``--device`` and ``-q`` come from one definition each (segformer.cli.common)."""
    required = {"serve": ["--weights", "w"], "predict": ["x", "--weights", "w", "--out", "o"]}.get(command, [])
    parser = build_parser(command)
    with pytest.raises(SystemExit):
        parser.parse_args([*required, "--threads", "0"])
    assert "--threads: expected a number >= 1, got 0" in capsys.readouterr().err
    args = parser.parse_args([*required, "--threads", "3", "--device", "cpu"])
    assert (args.threads, args.device) == (3, "cpu")
    assert parser.parse_args(required).device is None  # resolved when the command runs: cuda when available
    if command != "serve":  # the server prints one line: nothing to quieten
        assert parser.parse_args([*required, "-q"]).quiet is True
