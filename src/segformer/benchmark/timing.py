"""Timing: interleaved rounds of every row's step, the one-time cost of a runner's first calls at a shape, and the
CPU thread count a measurement runs with."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_call(step: Callable[[], object], device: str) -> float:
    """Seconds of one call of ``step``, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def time_interleaved(
    steps: dict[str, Callable[[], None]], device: str, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each step, one call of each per round, after ``warmup`` untimed rounds."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(warmup + repeats):
        for name, step in steps.items():
            seconds = timed_call(step, device)
            if round_ >= warmup:
                times[name].append(seconds)
    return times


def first_calls(step: Callable[[], object], device: str) -> tuple[float, float]:
    """Seconds of the first and the second call of ``step`` at a shape it has not seen.

    For the default runner on CUDA the first call runs eagerly and the second captures the CUDA graph (a warm-up
    on a side stream, the capture, a replay: ``segformer.runner.GraphCache``); for the compiled runner the first
    call holds the compile. Later calls replay.
    """
    return timed_call(step, device), timed_call(step, device)


@contextlib.contextmanager
def num_threads(threads: int | None):
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
