"""Fixtures shared by several test modules."""

import pytest
import torch


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
