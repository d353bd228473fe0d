"""ONNX export: `segformer export` writes a file that onnxruntime runs at other sizes, matching PyTorch."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import segformer
from cli_process import TOOL_NOISE, help_imports, run_segformer
from reference import perturb_batchnorm
from segformer.cli import main as cli_main
from segformer.export import EXPORT_MIN_SIZE, export_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[segformer.SegFormer, str, int, str, str]:
    """A B0 with non-trivial BatchNorm statistics, exported once by ``segformer export`` in a process of its own
    (traced at 64×96), as a user runs it.

    Returns the model, the ONNX path, the command's exit status, its stdout and its stderr.
    """
    torch.manual_seed(0)
    model = segformer.create_model("b0", num_classes=6).eval()
    perturb_batchnorm(model.decode_head.linear_fuse.bn)
    folder = tmp_path_factory.mktemp("export")
    model.save_pretrained(folder / "weights")
    path = str(folder / "b0.onnx")
    result = run_segformer("export", "--weights", str(folder / "weights"), path, "--height", "64", "--width", "96")
    return model, path, result.returncode, result.stdout, result.stderr


def test_export_cli_writes_a_model_with_dynamic_batch_and_size(exported):
    model, path, status, out, err = exported
    assert status == 0, err
    assert f"wrote SegFormer-b0 (6 classes) to {path}" in out
    assert "checked with onnxruntime" in out
    graph = onnx.load(path).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3])), dims


@pytest.mark.parametrize("batch, height, width", [(1, 256, 320), (2, 193, 257), (3, EXPORT_MIN_SIZE, 101)])
def test_onnxruntime_matches_pytorch_at_other_sizes(exported, batch, height, width):
    """Sizes other than the trace's (64×96), odd ones too: upsampling sizes come from the input shape."""
    model, path, *_ = exported
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height))
    with torch.inference_mode():
        expected = model(x).numpy()
    (got,) = session.run(["logits"], {"pixel_values": x.numpy()})
    assert got.shape == expected.shape == (batch, 6, -(-height // 4), -(-width // 4))
    assert np.abs(expected).mean() > 0.1
    assert np.abs(got - expected).max() <= 1e-4


def test_export_refuses_sizes_below_the_minimum(tmp_path):
    model = segformer.create_model("b0", num_classes=3)
    with pytest.raises(ValueError, match=f"export size 40×96: height and width must be >= {EXPORT_MIN_SIZE}"):
        export_onnx(model, tmp_path / "m.onnx", 40, 96)
    with pytest.raises(ValueError, match="opset 13 is too old"):
        export_onnx(model, tmp_path / "m.onnx", opset=13)


def test_export_without_onnx_prints_only_the_install_hint(tmp_path, monkeypatch, capsys):
    model = segformer.create_model("b0", num_classes=3)
    model.save_pretrained(tmp_path / "w")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as when the package is absent
    status = cli_main(["export", "--weights", str(tmp_path / "w"), str(tmp_path / "m.onnx")])
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    assert captured.err.startswith("segformer export: error: ONNX export needs onnx and onnxscript (")
    assert captured.err.rstrip().endswith("pip install 'segformer[export]'") and captured.err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()


def test_export_prints_none_of_the_exporters_noise(exported):
    """torch.onnx's torchvision lines and torch.export's ``LeafSpec`` warning are silenced; the file written still
    gives PyTorch's logits."""
    model, path, status, out, err = exported
    assert status == 0, err
    for noise in TOOL_NOISE:
        assert noise not in out and noise not in err, f"{noise!r} printed:\n{out}{err}"
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(x).numpy()
    (got,) = session.run(["logits"], {"pixel_values": x.numpy()})
    assert np.abs(got - expected).max() <= 1e-4


def test_export_help_does_not_import_torch():
    text, modules = help_imports("export")
    assert text.startswith("usage: segformer export") and "--quantize" in text
    assert "segformer.cli.export" in modules  # the command's own module was read for its flags
    assert "torch" not in modules, sorted(m for m in modules if m.startswith("segformer"))
