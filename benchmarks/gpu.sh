#!/usr/bin/env bash
# The GPU table of issue 11 in one run (target: under 8 minutes on one H100/H200), printed as it goes:
# inference B0/B2/B5 at 512² batch 1 and 16 (bf16, fp32) and 1024×2048 batch 1 (ours eager, "ours-fast" = the
# default predict/eval path: bf16 + channels-last + torch.compile with CUDA graphs, transformers eager/sdpa),
# the same compiled with torch.compile (every model), a training step at 8×512² with peak memory,
# `segformer serve` with batched requests against one at a time (32 clients), and end-to-end
# `segformer train` images/s and data-wait share on a synthetic set.
#
#   bash benchmarks/gpu.sh              # on the GPU machine; needs torch and transformers, no pip install
#   bash benchmarks/gpu.sh --dry-run    # tiny sizes on the CPU (compile with the aot_eager backend), to check it
#   GPU_BENCH_VARIANTS="b0" bash benchmarks/gpu.sh   # fewer variants when time is short
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export SEGFORMER_ENGINE=torch
DRY=${GPU_BENCH_DRY_RUN:-0}
[[ "${1:-}" == "--dry-run" ]] && DRY=1

if [[ "$DRY" == 1 ]]; then
  DEVICE=cpu; VARIANTS=${GPU_BENCH_VARIANTS:-b0}; SQUARE=64x64; LARGE=64x128; BATCH=2; TRAIN_BATCH=2
  TIMING=(--repeats 1 --warmup 0); E2E=(--dry-run --workers 1); SERVE=(--size 64 --seconds 3 --clients 4 --max-batch 4)
  # inductor's C++ build takes minutes on a CPU: compile with aot_eager (same capture, no code generation)
  CLI=(python -c "import functools, sys, torch; torch.compile = functools.partial(torch.compile, backend='aot_eager')
from segformer.cli import main; sys.exit(main(sys.argv[1:]))")
else
  DEVICE=cuda; VARIANTS=${GPU_BENCH_VARIANTS:-b0 b2 b5}; SQUARE=512x512; LARGE=1024x2048; BATCH=16; TRAIN_BATCH=8
  TIMING=(--repeats 20 --warmup 3); E2E=(); SERVE=(--seconds 20 --clients 32 --max-batch 16 --threads 8)
  CLI=(python -m segformer.cli)
fi
read -r -a VARIANT_LIST <<< "$VARIANTS"
bench() { "${CLI[@]}" benchmark --device "$DEVICE" --variants "${VARIANT_LIST[@]}" "${TIMING[@]}" "$@"; }
section() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

section "machine"
python -c "
import torch, transformers
card = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU (dry run on the CPU)'
print(f'{card}; torch {torch.__version__}, transformers {transformers.__version__}')"

section "inference $SQUARE batch 1, bf16"
bench --sizes "$SQUARE" --batch-size 1 --dtype bf16 --compare-hf --fast --no-memory
section "inference $SQUARE batch $BATCH, bf16"
bench --sizes "$SQUARE" --batch-size "$BATCH" --dtype bf16 --compare-hf --fast --no-memory
section "inference $SQUARE batch $BATCH, fp32"
bench --sizes "$SQUARE" --batch-size "$BATCH" --dtype fp32 --compare-hf --fast --no-memory
section "inference $LARGE batch 1, bf16"
bench --sizes "$LARGE" --batch-size 1 --dtype bf16 --compare-hf --fast --no-memory
section "training step $TRAIN_BATCH×$SQUARE, bf16, peak memory (ours-fast: compiled, fused AdamW)"
bench --sizes "$SQUARE" --batch-size "$TRAIN_BATCH" --dtype bf16 --compare-hf --fast --train
section "compiled (torch.compile default mode, every model): inference $SQUARE batch $BATCH and 1, bf16"
bench --sizes "$SQUARE" --batch-size "$BATCH" --dtype bf16 --compare-hf --compile --no-memory
bench --sizes "$SQUARE" --batch-size 1 --dtype bf16 --compare-hf --compile --no-memory
section "segformer serve: batched requests against one at a time (issue 12's GPU target: >= 3x)"
python benchmarks/serve_load.py --compare-batching --device "$DEVICE" "${SERVE[@]}"
section "segformer train end to end (synthetic scenes)"
python benchmarks/gpu_end_to_end.py "${E2E[@]}"
section "done"
