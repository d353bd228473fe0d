"""AdamW with the official SegFormer parameter groups, and mmcv's poly schedule with linear warm-up.

The official config sets ``paramwise_cfg=dict(custom_keys={'pos_block': dict(decay_mult=0.),
'norm': dict(decay_mult=0.), 'head': dict(lr_mult=10.)})``. mmcv's ``DefaultOptimizerConstructor``
tries the keys longest first, ties alphabetically (pos_block, head, norm), and the first key that
is a substring of the parameter name wins. With the official parameter names this gives:

- ``decode_head.*`` (every decoder parameter, its BatchNorm ``decode_head.linear_fuse.bn.*``
  included, since "head" is tried before "norm" and "bn" does not contain "norm"): lr × 10,
  weight decay 0.01;
- encoder parameters whose name contains "norm" (``patch_embed{i}.norm``, ``block*.norm1``/``norm2``,
  ``block*.attn.norm``, ``backbone.norm{i}``): lr × 1, no weight decay;
- every other encoder parameter (biases included): lr × 1, weight decay 0.01.

MiT has no ``pos_block`` parameters (no positional encoding).
"""

from __future__ import annotations

import torch
from torch import nn

from segformer.recipe import OptimRecipe


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict]:
    """The groups above ("other", "norm", "head"), each with ``name``, ``lr``, ``initial_lr``, ``weight_decay``."""
    groups = {
        "other": {"params": [], "lr": lr, "weight_decay": weight_decay},
        "norm": {"params": [], "lr": lr, "weight_decay": 0.0},
        "head": {"params": [], "lr": lr * head_lr_mult, "weight_decay": weight_decay},
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = "head" if "head" in name else "norm" if "norm" in name else "other"
        groups[key]["params"].append(param)
    return [{"name": k, "initial_lr": g["lr"], **g} for k, g in groups.items() if g["params"]]


def build_optimizer(
    model: nn.Module,
    lr: float = 6e-5,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
    head_lr_mult: float = 10.0,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (official: lr 6e-5, betas (0.9, 0.999), weight decay 0.01, head × 10).

    ``fused``: one fused kernel for the whole update (the trainer asks for it when the parameters are on CUDA);
    None leaves torch's default implementation.
    """
    groups = param_groups(model, lr, weight_decay, head_lr_mult)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def recipe_optimizer(model: nn.Module, optim: OptimRecipe, device: torch.device) -> torch.optim.AdamW:
    """``build_optimizer`` with the recipe's ``[optim]`` values, fused (one kernel per step) when on CUDA."""
    fused = True if device.type == "cuda" else None
    return build_optimizer(model, optim.lr, tuple(optim.betas), optim.weight_decay, optim.head_lr_mult, fused)


def poly_lr(
    iteration: int,
    base_lr: float,
    max_iters: int,
    power: float = 1.0,
    min_lr: float = 0.0,
    warmup_iters: int = 1500,
    warmup_ratio: float = 1e-6,
) -> float:
    """Learning rate before 0-based ``iteration`` (mmcv ``PolyLrUpdaterHook`` with ``warmup='linear'``).

    poly = (base_lr − min_lr) · (1 − it / max_iters)^power + min_lr; during the first ``warmup_iters``
    iterations it is multiplied by 1 − (1 − it / warmup_iters) · (1 − warmup_ratio).
    """
    lr = (base_lr - min_lr) * (1 - iteration / max_iters) ** power + min_lr
    if iteration < warmup_iters:
        lr *= 1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio)
    return lr


def set_lr(optimizer: torch.optim.Optimizer, iteration: int, max_iters: int, **schedule) -> float:
    """Set every group's lr to ``poly_lr`` of its ``initial_lr``; return the first group's (the base lr)."""
    for group in optimizer.param_groups:
        group["lr"] = poly_lr(iteration, group["initial_lr"], max_iters, **schedule)
    return optimizer.param_groups[0]["lr"]
