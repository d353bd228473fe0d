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


@pytest.fixture(scope="session", autouse=True)
def fp32_torch_by_default():
    """Commands run the PyTorch model in fp32 unless a test asks otherwise: tests compare numbers with fp32
    references, and on a CPU with AMX the default precision is bf16. Session-wide, so that module fixtures
    see it too; subprocesses inherit it. tests/test_gpu_paths.py and tests/test_engines.py check the
    defaults themselves."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGFORMER_ENGINE", "torch")
        patch.setenv("SEGFORMER_DTYPE", "fp32")
        yield


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """A random B0 with three named classes (sky, road, tree), saved with save_pretrained; test modules that
    need other weights define their own ``weights`` fixture."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    create_model("b0", num_classes=3, class_names=["sky", "road", "tree"]).save_pretrained(folder)
    return folder
