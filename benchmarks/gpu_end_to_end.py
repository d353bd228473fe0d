"""End-to-end ``segformer train`` speed and data-wait share on a synthetic set, against the bare training step.

Writes synthetic scenes in the custom-folder layout; measures the input pipeline alone (``data_images_per_s``, what
``segformer benchmark --data`` prints) and the bare step (``segformer benchmark --train --fast``'s row: the trainer's
own step on one fixed batch); then trains SegFormer-B0 from random weights with the custom recipe (bf16,
channels-last "auto"; compiled only with ``--compile``) and reports, from ``metrics.jsonl``, the images/s and the
share of time spent waiting for data over the logged intervals after the first ``--skip`` iterations (100: the
workers' start-up, cuDNN's first calls and, compiled, the compile and the backlog of batches the workers prepared
meanwhile are all behind them). Targets: at least 90% of the bare step's images/s, data wait under 10%.

    PYTHONPATH=src python3 benchmarks/gpu_end_to_end.py [--tiny] [--device cuda] [--workers N] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from segformer.benchmark import Case, data_images_per_s, run_case
from segformer.benchmark.case import COMPILED, FAST
from segformer.benchmark.summary import append_records
from segformer.cli import main
from segformer.data import write_synthetic
from segformer.recipe import load_recipe


def summarize(records: list[dict], batch_size: int, after: int) -> tuple[float, float]:
    """(images/s, data-wait share) over the logged intervals that start at iteration ``after`` or later, weighted
    by their iterations.

    Raises:
        ValueError: no logged interval starts that late (the run is too short for ``after``).
    """
    logs = [r for r in records if "sec_per_iter" in r]
    starts = [previous["iter"] for previous in [{"iter": 0}, *logs[:-1]]]
    steady = [(r, r["iter"] - start) for r, start in zip(logs, starts, strict=True) if start >= after]
    if not steady:
        raise ValueError(f"no logged interval starts at iteration {after} or later: train for longer")
    seconds = sum(r["sec_per_iter"] * n for r, n in steady)
    waited = sum(r["data_wait"] * r["sec_per_iter"] * n for r, n in steady)
    return batch_size * sum(n for _, n in steady) / seconds, waited / seconds


def settings(args: argparse.Namespace, size: tuple[int, int], batch: int, iters: int, log: int) -> dict[str, str]:
    """The recipe fields the run sets (TOML values), on top of the packaged custom recipe."""
    crop = f"[{size[0]}, {size[1]}]"
    return {
        "model.variant": '"b0"',
        "model.init": '""',
        "data.crop": crop,
        "data.scale": f"[{2 * size[0]}, {size[0]}]",
        "data.test_scale": crop,
        "data.batch_size": str(batch),
        "data.workers": str(args.workers),
        "data.check": "false",
        "optim.warmup_iters": "0",
        "schedule.iters": str(iters),
        "schedule.val_interval": "0",
        "schedule.ckpt_interval": "0",
        "schedule.log_interval": str(log),
        "train.compile": str(args.compile).lower(),
    }


def run(args: argparse.Namespace, out: Path) -> dict:
    size, count, batch, iters, log, skip = ((64, 64), 8, 2, 8, 2, 4) if args.tiny else ((512, 512), 64, 8, 200, 20, 100)
    skip = args.skip if args.skip is not None else skip
    root = write_synthetic(out / "data", num_train=count, num_val=2, size=size, seed=0)
    fields = settings(args, size, batch, iters, log)
    recipe = load_recipe("custom", [f"{key}={value}" for key, value in fields.items()])
    recipe.data.root = str(root)
    pipeline = data_images_per_s(recipe, args.workers, repeats=2 if args.tiny else 10)
    case = Case("b0", *size, batch_size=batch, device=args.device, train=True, num_classes=6, compile=args.compile)
    rows = run_case(case, fast=True, memory=False, repeats=3 if args.tiny else 20, warmup=3)
    bare = next(r for r in rows if r.impl == (COMPILED if args.compile else FAST))
    sets = [item for key, value in fields.items() for item in ("--set", f"{key}={value}")]
    command = ["train", "custom", "--data-root", str(root), "--out", str(out / "run"), "--device", args.device]
    if main([*command, *sets, "-q"]):
        raise SystemExit("segformer train failed")
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rate, wait = summarize(records, batch, after=skip)
    figures = {
        "variant": "b0",
        "batch_size": batch,
        "crop": list(size),
        "workers": args.workers,
        "compiled": args.compile,
        "precision": bare.precision,
        "iters": iters,
        "measured_after_iter": skip,
        "train_images_per_s": rate,
        "bare_step_images_per_s": bare.images_per_s,
        "share_of_bare_step": rate / bare.images_per_s,
        "data_wait": wait,
        "input_pipeline_images_per_s": pipeline,
    }
    print(
        f"segformer train end to end: {rate:.1f} img/s = {rate / bare.images_per_s:.1%} of the bare step's "
        f"{bare.images_per_s:.1f} img/s (target >= 90%), data wait {wait:.1%} (target < 10%) over iterations "
        f"{skip}-{iters}; input pipeline alone {pipeline:.1f} img/s (B0 {bare.precision}, batch {batch}, "
        f"{size[0]}x{size[1]}, {args.workers} workers, {'compiled' if args.compile else 'not compiled'})"
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="64² scenes, a few iterations (smoke and dry runs)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=min(len(os.sched_getaffinity(0)), 12))
    parser.add_argument("--compile", action="store_true", help="compile the step (train.compile = true) in both")
    parser.add_argument("--skip", type=int, help="iterations left out of the figures (default: 100; --tiny: 4)")
    parser.add_argument("--json", help="append the figures to this JSON Lines summary")
    parser.add_argument("--section", default="train-end-to-end", help="their section in --json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segformer-gpu-e2e-") as tmp:
        figures = run(args, Path(tmp))
    if args.json:
        append_records(args.json, args.section, [{"device": args.device, **figures}])
    sys.exit(0)
