"""Process groups under ``torchrun`` and synchronised BatchNorm on any device (used by train, eval and predict).

``torchrun`` sets WORLD_SIZE, RANK and LOCAL_RANK; with more than one process the group uses NCCL
on CUDA and Gloo on CPU. The decoder's BatchNorm becomes ``nn.SyncBatchNorm`` on GPUs, and
``DistributedBatchNorm`` elsewhere (``nn.SyncBatchNorm`` refuses CPU tensors).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from segformer.device import resolve_device


@dataclass(frozen=True)
class Distributed:
    """Where this process runs: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def local_device(name: str | None = None) -> torch.device:
    """The device this process runs on, made current: ``name`` resolved (CUDA when available and None), and a
    CUDA device without an index is GPU ``LOCAL_RANK`` (set by ``torchrun``; else the current GPU).

    Every command that runs under torchrun (train, eval, predict) picks its device here, so that each rank
    opens its CUDA context on its own GPU and not every rank on GPU 0.

    Raises:
        ValueError: ``name`` is not a device name or not available here (``segformer.device.resolve_device``).
    """
    device = resolve_device(name)
    if device.type == "cuda":
        if device.index is None:
            local_rank = os.environ.get("LOCAL_RANK")
            device = torch.device("cuda", int(local_rank) if local_rank else torch.cuda.current_device())
        torch.cuda.set_device(device.index)
    return device


def init_distributed(device: str | None = None, backend: str | None = None) -> Distributed:
    """Pick the device (``local_device``) and join the ``torchrun`` process group if WORLD_SIZE > 1.

    Args:
        device: a device name; None chooses CUDA when available.
        backend: the process group's backend; None is NCCL on CUDA and Gloo elsewhere (predict asks for
            Gloo: its collectives carry Python objects between host memories).

    Raises:
        ValueError: ``device`` is not a device name or not available here (``segformer.device.resolve_device``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = local_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend, device_id=dev if backend == "nccl" else None)
    return Distributed(rank, world_size, local_rank, dev)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over all processes (``value`` itself with one process)."""
    if not dist.is_initialized():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on at least one process (``flag`` itself with one process); call on every rank."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj: object, *, main_only: bool = False) -> list:
    """``[obj of rank 0, obj of rank 1, …]`` on every process; with ``main_only``, on rank 0 alone (the other
    ranks get ``[]``), so that only rank 0 holds them all. Call on every rank."""
    if not dist.is_initialized():
        return [obj]
    if main_only:
        gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered or []
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class DistributedBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batch of every process, on any device.

    The same computation as ``nn.SyncBatchNorm`` (mean and biased variance over all processes'
    pixels, unbiased variance into the running estimate), written with autograd-aware all-reduces
    so that it also runs on CPU with Gloo. Outside distributed training it is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        channels = x.shape[1]
        count = torch.tensor([x.numel() // channels], dtype=x.dtype, device=x.device)
        total = dist_fn.all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = total[-1].detach()
        mean = total[:channels] / n
        centred = x - mean[None, :, None, None]
        var = dist_fn.all_reduce((centred * centred).sum((0, 2, 3))) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), self.momentum)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace the BatchNorm2d layers of ``module``: ``nn.SyncBatchNorm`` on CUDA, else ``DistributedBatchNorm``."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = DistributedBatchNorm(child.num_features, child.eps, child.momentum, child.affine)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync.to(child.weight.device))
        else:
            convert_sync_batchnorm(child, device)
    return module
