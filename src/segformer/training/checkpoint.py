"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimiser and GradScaler states, the number of finished iterations,
the data position (micro-batches consumed), the best validation result so far and the random
number generator states (Python, NumPy, torch, CUDA) of every process. Only tensors, dicts,
lists, numbers and strings are stored, so it loads with ``torch.load(weights_only=True)``; files
are written atomically (temporary file + rename), so a killed run keeps its previous checkpoint,
and ``last.pt`` keeps one generation back in ``last.prev.pt``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from segformer.fileio import CheckpointError, atomic_write, read_tensors

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


def previous_path(path: str | Path) -> Path:
    """Where ``save_checkpoint(path, keep_previous=True)`` keeps the previous file: ``last.pt`` → ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | Path, state: dict, keep_previous: bool = False) -> None:
    """Write a training state (``TrainState.state_dict()``) atomically to ``path``.

    With ``keep_previous``, an existing ``path`` becomes ``previous_path(path)`` once the new file is
    fully written, just before the new one takes its place; a failed write changes nothing.
    """
    path = Path(path)

    def write(tmp: str) -> None:
        torch.save({"format": FORMAT, **state}, tmp)
        with open(tmp, "rb+") as f:  # on disk before the previous generation moves aside
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))

    atomic_write(path, write)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by ``save_checkpoint`` (safe: ``weights_only=True``).

    Raises:
        CheckpointError: missing, corrupt or not a segformer training checkpoint.
    """
    state = read_tensors(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a segformer training checkpoint (expected format {FORMAT!r})")
    return state
