"""Timing helpers of the benchmarks: fresh interpreters per case, median call times.

Cases in one process influence each other on CPU (heap state after gigabyte-sized allocations, a runtime's
worker threads spinning after a call), so each case gets its own process.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable

CODE = "import sys; from segformer.cli import main; sys.exit(main(sys.argv[1:]))"


def run_cases(cases: list[list[str]], extra: list[str]) -> int:
    """Run ``segformer benchmark`` with each argument list (plus ``extra``), each in a fresh interpreter (within a
    case, ours and transformers' models share it); first non-zero status or 0."""
    for args in cases:
        status = subprocess.run([sys.executable, "-c", CODE, "benchmark", *args, *extra]).returncode
        if status:
            return status
    return 0


def median_ms(call: Callable[[], object], calls: int, warmup: int = 0) -> float:
    """Median wall-clock milliseconds of ``calls`` calls of ``call``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def worker_ms(script: str, args: list[str]) -> float:
    """Run ``script --worker *args`` in a fresh interpreter; the milliseconds it prints on its last line."""
    out = subprocess.run([sys.executable, script, "--worker", *args], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])
