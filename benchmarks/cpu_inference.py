"""CPU inference, fp32, batch 1, 2 threads: ours against transformers (eager and sdpa), same weights and input.

python benchmarks/cpu_inference.py                 # B0 and B2 at 512×512, B0 at 1024×2048
python benchmarks/cpu_inference.py --repeats 20    # extra options go to `segformer benchmark`
"""

from __future__ import annotations

import sys

from segformer.cli import main

COMMON = ["benchmark", "--compare-hf", "--threads", "2", "--no-memory", "--repeats", "10", "--warmup", "2"]

if __name__ == "__main__":
    extra = sys.argv[1:]
    status = main([*COMMON, "--variants", "b0", "b2", "--sizes", "512x512", *extra])
    status = status or main([*COMMON, "--variants", "b0", "--sizes", "1024x2048", "--repeats", "5", *extra])
    sys.exit(status)
