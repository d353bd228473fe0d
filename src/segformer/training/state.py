"""The training state: everything ``--resume`` restores, saved and loaded through one pair of methods."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from segformer.distributed import gather_objects
from segformer.training.checkpoint import rng_state, set_rng_state


def _no_result() -> dict:
    return {"mIoU": math.nan, "iteration": 0}


@dataclass
class TrainState:
    """The model, optimiser and GradScaler, the progress and best result so far, and the random streams.

    Attributes:
        model: the network being trained (not its DDP wrapper).
        optimizer: AdamW over the model's parameter groups.
        scaler: the fp16 GradScaler (disabled otherwise).
        iteration: finished optimiser steps.
        micro_batches: micro-batches consumed (the data position to resume from).
        best: ``{"mIoU": …, "iteration": …}`` of the best validation so far (mIoU NaN before the first).
        world_size: number of processes.
        rank: this process's rank.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    iteration: int = 0
    micro_batches: int = 0
    best: dict = field(default_factory=_no_result)
    world_size: int = 1
    rank: int = 0

    def state_dict(self) -> dict:
        """Everything ``load_state_dict`` restores; gathers the RNG states of all processes (call on every rank)."""
        return {
            "iteration": self.iteration,
            "micro_batches": self.micro_batches,
            "world_size": self.world_size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": dict(self.best),
            "rng": gather_objects(rng_state()),
        }

    def load_state_dict(self, state: dict, source: str = "the checkpoint") -> None:
        """Restore ``state_dict()`` output; this rank's random streams too when the number of processes is the same.

        Args:
            state: a ``state_dict()`` (as read by ``segformer.training.checkpoint.load_checkpoint``).
            source: what ``state`` was read from, for the warning about a changed number of processes.
        """
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.micro_batches, self.best = state["iteration"], state["micro_batches"], dict(state["best"])
        if state["world_size"] == self.world_size:
            set_rng_state(state["rng"][self.rank])
        else:
            warnings.warn(
                f"{source}: saved with {state['world_size']} processes, resumed with {self.world_size}: "
                "the data order continues but random streams are reseeded",
                stacklevel=2,
            )
