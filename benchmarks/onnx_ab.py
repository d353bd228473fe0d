"""A/B timing of ONNX files with ONNX Runtime: each file in a process of its own, the files taking turns.

For comparing two versions of a graph (an int8 rewrite against the one before, fp32 with and without fusions)
on a noisy machine: a 1×3×H×W input, 2 threads, the median of ``--calls`` calls after 3 warm-ups per process,
then the median over ``--passes`` passes, and each file's speed relative to the first.

python benchmarks/onnx_ab.py --passes 5 before.onnx after.onnx
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from _run import median_ms, worker_ms


def time_file(path: str, size: int, threads: int, calls: int) -> float:
    """Median milliseconds of ``calls`` runs of one file after 3 warm-ups (in a worker process)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    return median_ms(lambda: session.run(["logits"], {"pixel_values": x}), calls, warmup=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="ONNX files (input pixel_values, output logits)")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per file and pass")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(time_file(args.files[0], args.size, args.threads, args.calls))
        return
    passes: dict[str, list[float]] = {f: [] for f in args.files}
    for _ in range(args.passes):
        for f in args.files:
            options = [f, "--size", str(args.size), "--threads", str(args.threads), "--calls", str(args.calls)]
            passes[f].append(worker_ms(__file__, options))
    first = statistics.median(passes[args.files[0]])
    print(f"{args.size}×{args.size}, batch 1, {args.threads} threads, median of {args.passes} passes")
    for f, values in passes.items():
        ms = statistics.median(values)
        runs = " ".join(f"{v:.1f}" for v in values)
        print(f"{Path(f).name:<28} {ms:7.1f} ms  {first / ms:5.2f}× first   ({runs})")


if __name__ == "__main__":
    main()
