"""One training step as the trainer runs it, and the recipe's choices that shape it.

``train_step`` is forward (under autocast), the loss, backward and the optimiser step, over one or more
micro-batches (gradient accumulation). The recipe decides the rest: whether the network is compiled
(``train.compile``), the images' memory layout (``train.channels_last``), the mixed precision and its
GradScaler (``precision``), and the loss (mmseg's cross-entropy with ``loss.class_weights``). The trainer
(``segformer.train``) and the benchmark (``segformer.benchmark``) both build their steps from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from segformer.constants import IGNORE_INDEX
from segformer.device import autocast_dtype
from segformer.recipe import Recipe

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, masks) -> scalar loss


def resolve_auto(value: bool | str, device: torch.device) -> bool:
    """A ``[train]`` switch of the recipe: true, false, or "auto" (on for CUDA, off elsewhere)."""
    return device.type == "cuda" if value == "auto" else bool(value)


def forward_module(recipe: Recipe, model: nn.Module, device: torch.device) -> nn.Module:
    """What the training steps call: ``model``, compiled (``torch.compile``) when ``train.compile`` says so.

    The compiled module shares ``model``'s parameters, so checkpoints and validation use ``model`` itself.
    """
    return torch.compile(model) if resolve_auto(recipe.train.compile, device) else model


def input_memory_format(recipe: Recipe, device: torch.device) -> torch.memory_format:
    """The images' layout: channels-last when ``train.channels_last`` says so (cuDNN skips layout conversions)."""
    return torch.channels_last if resolve_auto(recipe.train.channels_last, device) else torch.contiguous_format


def grad_scaler(amp_dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler: on for fp16 autocast (whose gradients underflow otherwise), a no-op for fp32 and bf16."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def segmentation_loss(
    logits: torch.Tensor, masks: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of logits resized bilinearly (align_corners False) to the label size, ignoring 255.

    As mmseg's ``CrossEntropyLoss`` (``avg_non_ignore=False``), the per-pixel losses (× class weight)
    are averaged over all pixels, ignored ones counting as zero.
    """
    logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, masks, weight=class_weights, ignore_index=IGNORE_INDEX, reduction="none")
    return loss.mean()


def recipe_loss(recipe: Recipe, num_classes: int, device: torch.device) -> Loss:
    """The recipe's loss: ``segmentation_loss`` weighted by ``loss.class_weights`` (unweighted when empty)."""
    weights = recipe.loss.class_weights
    if not weights:
        return segmentation_loss
    if len(weights) != num_classes:
        raise ValueError(f"loss.class_weights has {len(weights)} values for {num_classes} classes")
    return partial(segmentation_loss, class_weights=torch.tensor(weights, dtype=torch.float32, device=device))


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
    loss: Loss = segmentation_loss,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float = 0.0,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """One optimiser step over ``batches`` (gradient accumulation); returns their mean loss (detached).

    ``network`` maps images to logits (the model, compiled or in DDP). Under DDP the gradients are
    all-reduced only after the last micro-batch. The images are moved to ``device`` in ``memory_format``.
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
