"""Run ``segformer benchmark`` once per case, each in a fresh interpreter.

Cases in one process influence each other on CPU (heap state after gigabyte-sized allocations),
so each case gets its own process; within a case, ours and transformers' models share it.
"""

from __future__ import annotations

import subprocess
import sys

CODE = "import sys; from segformer.cli import main; sys.exit(main(sys.argv[1:]))"


def run_cases(cases: list[list[str]], extra: list[str]) -> int:
    """Run ``segformer benchmark`` with each argument list (plus ``extra``); first non-zero status or 0."""
    for args in cases:
        status = subprocess.run([sys.executable, "-c", CODE, "benchmark", *args, *extra]).returncode
        if status:
            return status
    return 0
