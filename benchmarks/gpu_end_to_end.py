"""End-to-end ``segformer train`` speed and data-wait share on a synthetic set (the last rows of benchmarks/gpu.sh).

Writes synthetic scenes in the custom-folder layout, measures the input pipeline alone (``segformer benchmark
--data``), then trains SegFormer-B0 from random weights with the custom recipe (bf16, compile and channels-last
"auto") and reports, from ``metrics.jsonl``, the images/s and the share of time spent waiting for data over the
logged intervals after the first (which holds compilation and worker start-up).

    PYTHONPATH=src python benchmarks/gpu_end_to_end.py [--dry-run] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from segformer.cli import main
from segformer.data import write_synthetic


def summarize(records: list[dict], batch_size: int) -> tuple[float, float]:
    """(images/s, data-wait share) over the logged intervals after the first, weighted by their iterations."""
    logs = [r for r in records if "sec_per_iter" in r]
    counts = [r["iter"] - previous["iter"] for previous, r in zip([{"iter": 0}, *logs], logs, strict=False)]
    intervals = list(zip(logs, counts, strict=True))
    steady = intervals[1:] or intervals
    seconds = sum(r["sec_per_iter"] * n for r, n in steady)
    waited = sum(r["data_wait"] * r["sec_per_iter"] * n for r, n in steady)
    return batch_size * sum(n for _, n in steady) / seconds, waited / seconds


def run(dry_run: bool, workers: int, out: Path) -> int:
    size, count, batch, iters, log = ((64, 64), 8, 2, 4, 2) if dry_run else ((512, 512), 64, 16, 60, 10)
    root = write_synthetic(out / "data", num_train=count, num_val=2, size=size, seed=0)
    crop = f"[{size[0]}, {size[1]}]"
    settings = {
        "model.variant": '"b0"',
        "model.init": '""',
        "data.crop": crop,
        "data.scale": f"[{2 * size[0]}, {size[0]}]",
        "data.test_scale": crop,
        "data.batch_size": str(batch),
        "data.workers": str(workers),
        "data.check": "false",
        "optim.warmup_iters": "0",
        "schedule.iters": str(iters),
        "schedule.val_interval": "0",
        "schedule.ckpt_interval": "0",
        "schedule.log_interval": str(log),
    }
    sets = [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]
    device = ["--device", "cpu"] if dry_run else []
    data = ["benchmark", "--data", "--recipe", "custom", "--data-root", str(root), "--workers", str(workers)]
    status = main([*data, "--batch-size", str(batch), "--repeats", "2" if dry_run else "10"])
    status = status or main(["train", "custom", "--data-root", str(root), "--out", str(out / "run"), *sets, *device])
    if status:
        return status
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rate, wait = summarize(records, batch)
    print(f"segformer train end to end: {rate:.1f} img/s, data wait {wait:.1%} (B0, batch {batch}, {workers} workers)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, to check the script")
    parser.add_argument("--workers", type=int, default=min(len(os.sched_getaffinity(0)), 12))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segformer-gpu-e2e-") as tmp:
        sys.exit(run(args.dry_run, args.workers, Path(tmp)))
