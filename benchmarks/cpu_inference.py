"""CPU inference, fp32, batch 1, 2 threads: ours against transformers (eager and sdpa), same weights and input.

python benchmarks/cpu_inference.py                 # B0 and B2 at 512×512, B0 at 1024×2048
python benchmarks/cpu_inference.py --repeats 20    # extra options go to `segformer benchmark`
"""

from __future__ import annotations

import sys

from _run import run_cases

COMMON = ["--compare-hf", "--threads", "2", "--no-memory", "--warmup", "2"]
CASES = [
    [*COMMON, "--variants", "b0", "--sizes", "512x512", "--repeats", "20"],
    [*COMMON, "--variants", "b2", "--sizes", "512x512", "--repeats", "10"],
    [*COMMON, "--variants", "b0", "--sizes", "1024x2048", "--repeats", "5"],
]

if __name__ == "__main__":
    sys.exit(run_cases(CASES, sys.argv[1:]))
