"""Peak memory of one step: the CUDA allocator's peak, or on the CPU the peak resident set size of a fresh
interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from segformer.benchmark.case import Case
from segformer.benchmark.models import load_model, make_inputs, make_step

CUDA_WARMUP_STEPS = 3  # steps before the measured one: lazy initialisation, and a runner's CUDA graph captured


def _rss_bytes(field: str) -> int:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process, from ``/proc/self/status`` (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}: CPU peak memory needs Linux")


def cuda_step_peak_mib(step) -> float:
    """The CUDA allocator's peak rise (MiB) during one call of ``step``, over what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def cpu_step_peak_mib(step) -> float:
    """The peak RSS rise (MiB) of this process during one call of ``step``: the peak is first reset to the current
    RSS (``/proc/self/clear_refs``, Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_bytes("VmRSS")
    step()
    return (_rss_bytes("VmHWM") - before) / 2**20


def peak_memory_mib(impl: str, directory: Path, case: Case, compare_hf: bool, threads: int | None = None) -> float:
    """Peak memory rise (MiB) during one step after warm-up: CUDA allocator peak, or CPU peak RSS in a fresh
    subprocess. A runner row's CUDA graphs keep their memory pool between calls: that pool is held before the
    measured step, so the rise is the step's own working memory."""
    if case.device.startswith("cuda"):
        model = load_model(impl, directory, case, compare_hf)
        step = make_step(model, impl, case, *make_inputs(case))
        for _ in range(CUDA_WARMUP_STEPS):  # lazy initialisation (cuDNN, optimiser state) is not the steady state
            step()
        return cuda_step_peak_mib(step)
    job = json.dumps({"impl": impl, "directory": str(directory), "case": asdict(case), "compare_hf": compare_hf})
    code = f"import segformer.benchmark.memory as m; m.cpu_peak_rss_child({job!r}, {threads!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {impl} on {case.label} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def cpu_peak_rss_child(job: str, threads: int | None) -> None:
    """Runs in a fresh interpreter: print the peak RSS rise (MiB) of one step.

    A first step on a small input loads code pages and initialises lazily (kernels, optimiser
    state) without leaving much freed memory in the heap; then the peak is reset to the current
    RSS (``/proc/self/clear_refs``) and the real step runs.
    """
    spec = json.loads(job)
    if threads:
        torch.set_num_threads(threads)
    case = Case(**spec["case"])
    model = load_model(spec["impl"], Path(spec["directory"]), case, spec["compare_hf"])
    small = replace(case, height=64, width=64)
    make_step(model, spec["impl"], small, *make_inputs(small))()
    print(cpu_step_peak_mib(make_step(model, spec["impl"], case, *make_inputs(case))))
