"""Fixtures shared by several test modules."""

from pathlib import Path

import pytest
import torch

from segformer import create_model


@pytest.fixture(scope="module")
def one_thread():
    """Tiny inputs gain nothing from threads, and on a shared machine thread barriers stall."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def torch_engine_by_default(monkeypatch):
    """Commands run the PyTorch model unless a test asks for ONNX Runtime: the engine's own tests export once,
    while every command test would otherwise export its model to ONNX first (the default on a CPU with
    onnxruntime installed). Subprocesses inherit the setting."""
    monkeypatch.setenv("SEGFORMER_ENGINE", "torch")


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """A random B0 with three named classes (sky, road, tree), saved with save_pretrained; test modules that
    need other weights define their own ``weights`` fixture."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    create_model("b0", num_classes=3, class_names=["sky", "road", "tree"]).save_pretrained(folder)
    return folder
