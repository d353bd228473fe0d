#!/usr/bin/env bash
# The GPU measurements of issue 19 in one run that fits a short GPU session: at most 7 minutes on one H100/H200
# for B0 and B2 (--b5 adds B5 and time). Sections, most important first, each independent (one that fails prints
# "FAILED <section>: <error>" and the next one runs; one that would start past the budget is not started):
#
#   machine           the card, torch/CUDA/cuDNN/transformers versions, the default precision
#   latency           512² batch 1: the default path (`segformer benchmark --fast`: the runner as predict/eval use
#                     it, bf16 + channels-last + CUDA graphs) after its first calls, its first and second call at a
#                     new shape (target <= 1 s, no compile), against our fp32 eager model
#   batch16           512² batch 16, bf16: default path against transformers eager (target >= 2x)
#   compiled          512² batch 16, bf16: opt-in compiled (--compile) against transformers compiled (>= 2x);
#                     the only rows that compile (2 models per variant, one shape each)
#   train-step        training step 8x512², bf16, peak memory: ours against transformers eager/sdpa (>= 1.5x, <= 0.8x)
#   predict           `segformer predict` on CUDA: seconds per new image size (<= 1 s), graphs compiled (0)
#   eval              `segformer eval` on 30 images of 30 sizes: seconds, graphs compiled (target: 0)
#   agreement         held-out labels of the default path against fp32 eager, demo model trained here (>= 99.9%)
#   serve             `segformer serve`, 16 clients: --max-batch 16 against --max-batch 1 (>= 3x); installs
#                     starlette, uvicorn, python-multipart from benchmarks/wheels (bash benchmarks/gpu_wheels.sh)
#   train-end-to-end  `segformer train` img/s against the bare step, data wait, after the first 100 iterations
#
# Output is unbuffered; every figure is appended, section by section, to the JSON Lines summary --json PATH
# (segformer.benchmark.summary; a killed run keeps the sections that finished), e.g. $OUT/gpu.jsonl on the device.
#
#   bash benchmarks/gpu.sh --json "$OUT/gpu.jsonl"     # on the GPU machine (carry benchmarks/wheels)
#   bash benchmarks/gpu_smoke.sh --json "$OUT/smoke.jsonl"   # first: every section at tiny sizes, under 2 minutes
#   bash benchmarks/gpu.sh --dry-run                   # every section at tiny sizes on the CPU, to check the script
#   bash benchmarks/gpu.sh --sections "compiled serve" --json ...   # only these sections (a rerun)
#   options: --b5, --budget SECONDS (default 420; smoke 150), --smoke (what gpu_smoke.sh passes)
DRY=0 SMOKE=0 B5=0 JSON="" BUDGET="" ONLY=""
while (($#)); do
  case $1 in
    --dry-run) DRY=1 ;;
    --smoke) SMOKE=1 ;;
    --b5) B5=1 ;;
    --json) JSON=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --sections) ONLY=" $2 "; shift ;;
    *) echo "gpu.sh: unknown option $1 (expected --dry-run, --smoke, --b5, --json PATH, --budget S, --sections LIST)" >&2
       exit 2 ;;
  esac
  shift
done
[[ -n $JSON ]] || JSON=$(mktemp /tmp/segformer-gpu-XXXXXX.jsonl)
JSON=$(realpath -m "$JSON")  # before the cd: a path relative to the caller's folder
mkdir -p "$(dirname "$JSON")"
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SEGFORMER_ENGINE=torch
unset SEGFORMER_DTYPE  # the default precision is what is measured

VARIANTS=(b0 b2)
((B5)) && VARIANTS+=(b5)
if ((DRY || SMOKE)); then  # tiny sizes: checks every section, measures nothing
  VARIANTS=(b0); SQUARE=64x64; BATCH=2; TRAIN_BATCH=2; TINY=(--tiny)
  LATENCY=(--repeats 2 --warmup 3); TIMING=(--repeats 2 --warmup 3); TRAIN_TIMING=(--repeats 1 --warmup 1)
  SERVE=(--size 64 --seconds 2 --warmup-seconds 1 --clients 4 --max-batch 4 --threads 2)
  # inductor costs ~30 s per model whatever the size (minutes on a CPU): the tiny runs compile with aot_eager,
  # the same Dynamo capture and CUDA graph path without code generation; the full run uses inductor
  export GPU_BENCH_COMPILE_BACKEND=aot_eager
  BUDGET=${BUDGET:-$((DRY ? 1500 : 150))}; TIMEOUT=$((DRY ? 600 : 90))
else
  SQUARE=512x512; BATCH=16; TRAIN_BATCH=8; TINY=()
  LATENCY=(--repeats 50 --warmup 5); TIMING=(--repeats 20 --warmup 3); TRAIN_TIMING=(--repeats 10 --warmup 3)
  SERVE=(--size 512 --seconds 8 --warmup-seconds 3 --clients 16 --max-batch 16 --threads 8)
  BUDGET=${BUDGET:-420}; TIMEOUT=240
fi
if ((DRY)); then
  DEVICE=cpu; MEMORY=(--no-memory); E2E=(--workers 1)  # CPU peak memory needs a fresh process per row: slow
else
  DEVICE=cuda; MEMORY=(); E2E=()
fi
export GPU_BENCH_START=$(date +%s)
DEADLINE=$((GPU_BENCH_START + BUDGET))
PY=(python3 -u benchmarks/gpu_launch.py)

# section NAME TIMEOUT COMMAND...: run it through gpu_section.py (FAILED-and-continue, status in the summary)
section() {
  local name=$1 timeout=$2
  shift 2
  [[ -z $ONLY || $ONLY == *" $name "* ]] || return 0
  python3 -u benchmarks/gpu_section.py --json "$JSON" --name "$name" --timeout "$timeout" --deadline "$DEADLINE" \
    -- "$@"
}
# bench NAME TIMEOUT ARGS...: a section of `segformer benchmark`, its rows appended to the summary
bench() {
  local name=$1 timeout=$2
  shift 2
  section "$name" "$timeout" "${PY[@]}" segformer benchmark --device "$DEVICE" --variants "${VARIANTS[@]}" \
    --sizes "$SQUARE" --json "$JSON" --section "$name" "$@"
}
if ((DRY)); then mode="dry run on the CPU"; elif ((SMOKE)); then mode="smoke run"; else mode="full run"; fi
echo "gpu.sh: $mode, variants ${VARIANTS[*]}, budget ${BUDGET} s, summary $JSON"

section machine 60 "${PY[@]}" benchmarks/gpu_commands.py machine --device "$DEVICE" --json "$JSON"
bench latency "$TIMEOUT" --batch-size 1 --fast --no-memory "${LATENCY[@]}"
bench batch16 "$TIMEOUT" --batch-size "$BATCH" --dtype bf16 --fast --compare-hf --no-memory "${TIMING[@]}"
bench compiled "$TIMEOUT" --batch-size "$BATCH" --dtype bf16 --compile --compare-hf --hf-attention sdpa --no-memory \
  "${TIMING[@]}"
bench train-step "$TIMEOUT" --train --batch-size "$TRAIN_BATCH" --dtype bf16 --fast --compare-hf "${MEMORY[@]}" \
  "${TRAIN_TIMING[@]}"
section predict "$TIMEOUT" "${PY[@]}" benchmarks/gpu_commands.py predict --device "$DEVICE" --json "$JSON" "${TINY[@]}"
section eval "$TIMEOUT" "${PY[@]}" benchmarks/gpu_commands.py eval --device "$DEVICE" --json "$JSON" "${TINY[@]}"
section agreement "$TIMEOUT" "${PY[@]}" benchmarks/gpu_commands.py agreement --device "$DEVICE" --json "$JSON" \
  "${TINY[@]}"
section serve "$TIMEOUT" "${PY[@]}" benchmarks/serve_load.py --compare-batching --device "$DEVICE" \
  --wheels benchmarks/wheels --json "$JSON" "${SERVE[@]}"
section train-end-to-end "$TIMEOUT" "${PY[@]}" benchmarks/gpu_end_to_end.py --device "$DEVICE" --json "$JSON" \
  "${TINY[@]}" "${E2E[@]}"

echo
echo "== summary ($(($(date +%s) - GPU_BENCH_START)) s in all): $JSON"
python3 benchmarks/gpu_section.py --json "$JSON" --report
