"""Peak memory and time of the trainer's training step with and without activation checkpointing
(``train.checkpointing``), SegFormer-B2, fp32: side by side per input size.

The model is ``segformer.benchmark.load_model``'s (the trainer's ``forward_module`` and ``train_step``, the
packaged recipe's AdamW groups and loss), checkpointing switched by ``segformer.training.step.set_checkpointing``.
Peak memory: each setting in a fresh interpreter, one step on a 64² input first (lazy initialisation, AdamW
state), then the measured step, as ``segformer benchmark`` measures it: on the CPU the rise of the peak resident
set size over the RSS before the step (the peak reset through ``/proc/self/clear_refs``), on CUDA the
allocator's peak over what was allocated before. Time: one interpreter per size, steps with and without
checkpointing interleaved (one of each per round, so that other load hits both alike), median of
``--repeats`` rounds after one warm-up round; and the multiply-adds of each step
(``segformer.benchmark.flops.count_gmacs``: the recomputed forward counts), which no other load changes.

    python benchmarks/train_memory.py [--sizes 512 1024] [--batch-sizes 2 1] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from segformer.benchmark import Case, load_model, make_inputs, make_step, save_weights
from segformer.benchmark.flops import count_gmacs
from segformer.benchmark.memory import cpu_step_peak_mib, cuda_step_peak_mib
from segformer.training.step import set_checkpointing

WIDTHS = (10, 13, 8, 7, 7, 6, 5, 5)


def case_of(args: argparse.Namespace, size: int, batch: int) -> Case:
    return Case(args.variant, size, size, batch_size=batch, device=args.device, dtype="fp32", train=True)


def worker(args: argparse.Namespace) -> None:
    """In a fresh interpreter: print the peak memory rise (MiB) of one step with ``--checkpointing`` as asked, or
    with ``--time`` the median milliseconds and the GMACs of a step without and with checkpointing, as JSON."""
    torch.set_num_threads(args.threads)
    case = case_of(args, args.sizes[0], args.batch_sizes[0])
    cuda = case.device.startswith("cuda")
    model = load_model("ours", Path(args.weights), case, compare_hf=False)
    set_checkpointing(model, args.checkpointing)
    small = replace(case, height=64, width=64)
    make_step(model, "ours", small, *make_inputs(small))()
    step = make_step(model, "ours", case, *make_inputs(case))
    if args.time:
        times = interleaved_ms(model, step, args.repeats, torch.cuda.synchronize if cuda else None)
        gmacs = {}
        for name in times:
            set_checkpointing(model, name == "on")
            gmacs[name] = count_gmacs(step)
        print(json.dumps({"ms": times, "gmacs": gmacs}))
        return
    if cuda:
        step()  # the full-size kernels' first call
    print(json.dumps(cuda_step_peak_mib(step) if cuda else cpu_step_peak_mib(step)))


def interleaved_ms(model: torch.nn.Module, step, repeats: int, sync) -> dict[str, float]:
    """Median milliseconds of ``step`` without ("off") and with ("on") checkpointing, one of each per round."""
    times: dict[str, list[float]] = {"off": [], "on": []}
    for round_ in range(repeats + 1):  # round 0: warm-up at the full size
        for name in times:
            set_checkpointing(model, name == "on")
            start = time.perf_counter()
            step()
            if sync:
                sync()
            if round_:
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def run_worker(args: argparse.Namespace, weights: Path, size: int, batch: int, *flags: str) -> object:
    command = [sys.executable, __file__, "--worker", "--weights", str(weights), "--sizes", str(size)]
    command += ["--batch-sizes", str(batch), "--variant", args.variant, "--device", args.device]
    command += ["--threads", str(args.threads), "--repeats", str(args.repeats), *flags]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="b2")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="square input sides")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 1], help="one per size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after the measured one")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--time", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if len(args.batch_sizes) != len(args.sizes):
        parser.error("--batch-sizes needs one batch size per --sizes entry")
    print(f"SegFormer-{args.variant.upper()} training step, fp32, {args.device}, {args.threads} thread(s)")
    header = ("input", "checkpointing", "peak MiB", "step s", "GMACs", "memory", "time", "MACs")
    print("  ".join(f"{name:>{width}}" for name, width in zip(header, WIDTHS, strict=True)))
    with tempfile.TemporaryDirectory(prefix="segformer-train-memory-") as tmp:
        for size, batch in zip(args.sizes, args.batch_sizes, strict=True):
            weights = save_weights(case_of(args, size, batch), Path(tmp))
            peak = {
                name: run_worker(args, weights, size, batch, *flags)
                for name, flags in (("off", []), ("on", ["--checkpointing"]))
            }
            timed = run_worker(args, weights, size, batch, "--time")
            step_ms, gmacs = timed["ms"], timed["gmacs"]
            for name in ("off", "on"):
                cells = (
                    f"{batch}×{size}²",
                    name,
                    f"{peak[name]:.0f}",
                    f"{step_ms[name] / 1e3:.2f}",
                    f"{gmacs[name]:.1f}",
                    f"{peak[name] / peak['off']:.2f}×",
                    f"{step_ms[name] / step_ms['off']:.2f}×",
                    f"{gmacs[name] / gmacs['off']:.2f}×",
                )
                print("  ".join(f"{cell:>{width}}" for cell, width in zip(cells, WIDTHS, strict=True)), flush=True)


if __name__ == "__main__":
    main()
