#!/usr/bin/env bash
# Every section of benchmarks/gpu.sh at tiny sizes on the GPU, in under 2 minutes: run it first, before the full
# run, to find what breaks on that machine cheaply. Same options as gpu.sh (--json PATH, --sections LIST,
# --dry-run: the same on the CPU). Torch.compile runs with the aot_eager backend here (inductor costs ~30 s per model
# whatever the size); the full run compiles with inductor.
#
#   bash benchmarks/gpu_smoke.sh --json "$OUT/smoke.jsonl"
exec bash "$(dirname "$0")/gpu.sh" --smoke "$@"
