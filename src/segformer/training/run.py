"""A training run's folder and how it stops: ``last.pt``/``best.pt`` written safely, resume, Ctrl-C.

``save_last`` and ``save_best`` write the full training state (``TrainState.state_dict()``) and the
``last/``/``best/`` weights with their model card (``segformer.training.card``); an OSError while writing
becomes a ``CheckpointWriteError`` that says what is kept. ``read_resume_state`` reads the checkpoint to
continue from, naming ``last.prev.pt`` when ``last.pt`` is corrupt. ``StopRequest`` turns the first Ctrl-C
into a request to stop after the current iteration, and ``TrainingInterrupted`` says where the last
checkpoint is and how to continue.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from segformer.config import TestProtocol
from segformer.distributed import Distributed
from segformer.fileio import CheckpointError
from segformer.recipe import Recipe
from segformer.training.card import model_card, write_model_card
from segformer.training.checkpoint import load_checkpoint, previous_path, save_checkpoint
from segformer.training.runlog import RunLog
from segformer.training.state import TrainState

LAST, BEST = "last.pt", "best.pt"


@dataclass
class Run:
    """What a run works with besides its ``TrainState``: recipe, folder, processes, protocol and outputs."""

    recipe: Recipe
    dir: Path
    dist_info: Distributed
    protocol: TestProtocol
    quiet: bool
    log: RunLog | None = None
    checkpoint_iteration: int | None = None  # iteration of the newest last.pt
    validation: dict | None = None  # the last validation's metrics.jsonl record (for the model cards)

    @property
    def is_main(self) -> bool:
        return self.dist_info.is_main


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; the message says where its last checkpoint is and how to continue."""

    def __init__(self, run_dir: Path, iteration: int | None) -> None:
        self.run_dir, self.iteration = run_dir, iteration
        if iteration is None:
            text = "interrupted before the first checkpoint: nothing to resume"
        else:
            text = (
                f"interrupted: the last checkpoint is {run_dir / LAST} (iteration {iteration}); "
                f"continue with: segformer train --resume {run_dir}"
            )
        super().__init__(text)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, …); the file it would have replaced is intact."""


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) into a request to stop after the current iteration; a second one stops at once.

    Installed only in the main thread (Python runs signal handlers there) over Python's default handler;
    elsewhere Ctrl-C behaves as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        print(
            "\nCtrl-C: stopping after this iteration to save a checkpoint (Ctrl-C again to quit now)", file=sys.stderr
        )

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def read_resume_state(run_dir: Path, checkpoint: str) -> dict:
    """The training state in ``run_dir/checkpoint``; a bad ``last.pt`` names the previous good one, if any.

    Raises:
        CheckpointError: missing or corrupt, with the ``--from-checkpoint`` command to use ``last.prev.pt``.
    """
    path = run_dir / checkpoint
    try:
        return load_checkpoint(path)
    except CheckpointError as error:
        previous = previous_path(path)
        if checkpoint != LAST or not previous.is_file():
            raise
        try:
            iteration = load_checkpoint(previous)["iteration"]
        except CheckpointError:
            raise error from None
        raise CheckpointError(
            f"{error}; the previous checkpoint {previous} (iteration {iteration}) is intact: resume from it with "
            f"segformer train --resume {run_dir} --from-checkpoint {previous.name}"
        ) from None


def discard_newer_last(run: Run, checkpoint: str) -> None:
    """Resuming from an older checkpoint: move ``last.pt`` aside (``last.discarded.pt``) so it is never rotated in."""
    last = run.dir / LAST
    if checkpoint == LAST or not run.is_main or not last.exists():
        return
    os.replace(last, run.dir / "last.discarded.pt")
    print(f"resuming from {run.dir / checkpoint}: {last} moved to {run.dir / 'last.discarded.pt'}")


def save_last(run: Run, state: TrainState) -> None:
    """``last.pt`` (the previous one kept as ``last.prev.pt``) and the ``last/`` weights; collective (every rank)."""
    checkpoint = state.state_dict()
    if run.is_main:
        with checkpoint_writing(run, run.dir / LAST):
            save_checkpoint(run.dir / LAST, checkpoint, keep_previous=True)
            save_weights(run, state, run.dir / "last")
    run.checkpoint_iteration = state.iteration


def save_best(run: Run, state: TrainState) -> None:
    """``best.pt`` and the ``best/`` weights; collective (every rank)."""
    checkpoint = state.state_dict()
    if run.is_main:
        with checkpoint_writing(run, run.dir / BEST):
            save_checkpoint(run.dir / BEST, checkpoint)
            save_weights(run, state, run.dir / "best")


def save_weights(run: Run, state: TrainState, folder: Path) -> None:
    """The model in the ``from_pretrained`` layout in ``folder``, and its model card (``README.md``) from the
    last validation."""
    state.model.save_pretrained(str(folder))
    card = model_card(
        state.model.config,
        run.recipe,
        folder=folder,
        iteration=state.iteration,
        processes=run.dist_info.world_size,
        validation=run.validation,
    )
    write_model_card(folder, card)


@contextlib.contextmanager
def checkpoint_writing(run: Run, path: Path) -> Iterator[None]:
    """Turn an OSError while saving (disk full …) into a CheckpointWriteError saying what is kept."""
    try:
        yield
    except OSError as e:
        kept = f"the previous {path.name} is intact" if path.exists() else "no earlier checkpoint was written"
        raise CheckpointWriteError(
            f"could not write {path} ({e.strerror or e}): {kept}; free some space in {run.dir} "
            f"and continue with: segformer train --resume {run.dir}"
        ) from None
