"""CPU training step (forward, bilinear-resized cross-entropy, backward, AdamW), B0, batch 2×512², fp32, 2 threads.

python benchmarks/train_step.py [extra `segformer benchmark` options]
"""

from __future__ import annotations

import sys

from segformer.cli import main

if __name__ == "__main__":
    args = ["benchmark", "--train", "--compare-hf", "--variants", "b0", "--sizes", "512x512", "--batch-size", "2"]
    sys.exit(main([*args, "--threads", "2", "--repeats", "5", "--warmup", "1", "--no-memory", *sys.argv[1:]]))
