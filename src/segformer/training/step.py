"""One training step as the trainer runs it, and the recipe's choices that shape it.

``train_step`` is forward (under autocast), the loss, backward and the optimiser step, over one or more
micro-batches (gradient accumulation). The recipe decides the rest: whether the network is compiled
(``train.compile``) and checkpoints its encoder blocks' activations (``train.checkpointing``), the images'
memory layout (``train.channels_last``), the mixed precision and its GradScaler (``precision``), and the
loss (the ``[loss]`` section, ``segformer.training.losses``; computed in float32 whatever the autocast
dtype). The trainer (``segformer.train``) and the benchmark (``segformer.benchmark``) both build their
steps from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from segformer.device import autocast_dtype
from segformer.model import MixTransformer
from segformer.recipe import Recipe
from segformer.training.losses import build_loss

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, masks) -> scalar loss


def resolve_auto(value: bool | str, device: torch.device) -> bool:
    """A ``[train]`` switch of the recipe: true, false, or "auto" (on for CUDA, off elsewhere)."""
    return device.type == "cuda" if value == "auto" else bool(value)


def forward_module(recipe: Recipe, model: nn.Module, device: torch.device) -> nn.Module:
    """What the training steps call: ``model`` with its encoder blocks checkpointed as ``train.checkpointing``
    says (``set_checkpointing``), compiled (``torch.compile``) when ``train.compile`` says so.

    The compiled module shares ``model``'s parameters, so checkpoints and validation use ``model`` itself.
    """
    set_checkpointing(model, recipe.train.checkpointing)
    return torch.compile(model) if resolve_auto(recipe.train.compile, device) else model


def set_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Turn activation checkpointing per encoder block (``MixTransformer.checkpointing``) on or off.

    Raises:
        ValueError: ``enabled`` for a model without a SegFormer encoder (``model.backbone``).
    """
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, MixTransformer):
        backbone.checkpointing = bool(enabled)
    elif enabled:
        raise ValueError(f"train.checkpointing: {type(model).__name__} has no SegFormer encoder (MixTransformer)")


def input_memory_format(recipe: Recipe, device: torch.device) -> torch.memory_format:
    """The images' layout: channels-last when ``train.channels_last`` says so (cuDNN skips layout conversions)."""
    return torch.channels_last if resolve_auto(recipe.train.channels_last, device) else torch.contiguous_format


def grad_scaler(amp_dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler: on for fp16 autocast (whose gradients underflow otherwise), a no-op for fp32 and bf16."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def recipe_loss(recipe: Recipe, num_classes: int, device: torch.device) -> Loss:
    """The recipe's ``[loss]`` (``segformer.training.losses.build_loss``), its class weights on ``device``."""
    return build_loss(recipe.loss, num_classes, device)


def step_settings(recipe: Recipe, num_classes: int, device: torch.device) -> dict:
    """The ``train_step`` arguments the recipe decides: ``loss``, ``amp_dtype``, ``clip_grad``, ``memory_format``."""
    return {
        "loss": recipe_loss(recipe, num_classes, device),
        "amp_dtype": autocast_dtype(recipe.precision, device),
        "clip_grad": recipe.clip_grad,
        "memory_format": input_memory_format(recipe, device),
    }


def train_step(
    *,
    network: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    loss: Loss,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float = 0.0,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """One optimiser step over ``batches`` (gradient accumulation); returns their mean loss (detached).

    ``network`` maps images to logits (the model, compiled or in DDP); ``loss`` maps (logits, masks) to a
    float32 scalar (``recipe_loss``). Under DDP the gradients are all-reduced only after the last micro-batch.
    The images are moved to ``device`` in ``memory_format``. With an enabled ``scaler`` (fp16) the loss is
    scaled for backward, the gradients unscaled before clipping, and a step with non-finite gradients skipped
    (``torch.amp.GradScaler``); the returned loss is the unscaled one, so a non-finite loss still shows.
    """
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for i, (images, masks) in enumerate(batches):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        last = i == len(batches) - 1
        no_sync = isinstance(network, DistributedDataParallel) and not last
        with network.no_sync() if no_sync else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = network(images)
            value = loss(logits, masks)
            scaler.scale(value / len(batches)).backward()
        total += value.detach()
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(network.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    return total / len(batches)
