"""The trainer's training step on the CPU (forward, bilinear-resized cross-entropy, backward, AdamW with the
recipe's parameter groups), B0, batch 2×512², fp32, 2 threads, beside transformers' model.

python benchmarks/train_step.py [extra `segformer benchmark` options]
"""

from __future__ import annotations

import sys

from _run import run_cases

CASE = ["--train", "--compare-hf", "--variants", "b0", "--sizes", "512x512", "--batch-size", "2", "--threads", "2"]

if __name__ == "__main__":
    sys.exit(run_cases([[*CASE, "--repeats", "5", "--warmup", "1", "--no-memory"]], sys.argv[1:]))
