"""Peak memory of CPU inference at 1024×2048 (B0, batch 1, fp32): ours against transformers.

Each model runs in a fresh subprocess; the number is the rise of the peak RSS during one forward
pass over the RSS before it (see `segformer.benchmark`).

    python benchmarks/memory.py [extra `segformer benchmark` options]
"""

from __future__ import annotations

import sys

from _run import run_cases

CASE = ["--compare-hf", "--variants", "b0", "--sizes", "1024x2048", "--threads", "2"]

if __name__ == "__main__":
    sys.exit(run_cases([[*CASE, "--repeats", "1", "--warmup", "0"]], sys.argv[1:]))
