"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimiser and GradScaler states, the number of finished iterations,
the data position (micro-batches consumed), the best validation result so far and the random
number generator states (Python, NumPy, torch, CUDA) of every process. Only tensors, dicts,
lists, numbers and strings are stored, so it loads with ``torch.load(weights_only=True)``; files
are written atomically (temporary file + rename), so a killed run keeps its previous checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from segformer.fileio import CheckpointError, atomic_torch_save, read_tensors

FORMAT = "segformer-train-1"


def rng_state() -> dict:
    """This process's Python, NumPy, torch and CUDA generator states as weights-only-safe values."""
    version, state, gauss = random.getstate()
    key, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {"key": key, "state": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore the generator states saved by ``rng_state``."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["key"],
            np.array(np_state["state"], dtype=np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write a training state (``segformer.train.training_state``) atomically to ``path``."""
    atomic_torch_save(path, {"format": FORMAT, **state})


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by ``save_checkpoint`` (safe: ``weights_only=True``).

    Raises:
        CheckpointError: missing, corrupt or not a segformer training checkpoint.
    """
    state = read_tensors(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a segformer training checkpoint (expected format {FORMAT!r})")
    return state
