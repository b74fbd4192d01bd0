#!/usr/bin/env bash
# GPU check: everything this project can only learn on a GPU, in one command, in at most ~8 minutes on one
# H100/H200 (step timeouts add up to 450 s, plus ~15 s of facts and report). Writes bench/results/gpu_check.md (+ the JSON next to it).
#
#   bash bench/gpu_check.sh             # on a CUDA box, from the repo root, project venv active
#   bash bench/gpu_check.sh --dry-run   # anywhere: print the steps, run the CPU-checkable parts (facts, report)
#
# Steps (each with its own timeout; a failing step is recorded and the others still run):
#   1. facts        capability, the dtype rule's choice vs torch.cuda.is_bf16_supported(), GPTQ kernel, versions
#   2. deepspeed    1-process accelerate + DeepSpeed ZeRO-2 nf4 QLoRA teacher step with gradient checkpointing
#   3. pytest_gpu   python -m pytest -m gpu (nf4 QLoRA, bf16 autocast distillation, GPTQ 8-bit on CUDA)
#   4. gemma_layer  real-width 1-layer Gemma-2 (hidden 3584, head_dim 256, MLP 14336), GPTQ 8-bit, 8 x 2,000
#                   tokens in fp16 and bf16 under a 16 GB cap (the T4 question; projects the whole 9B)
#   5. gemma_full   random-weight Gemma-2-9B bf16 at 2,000 tokens: rows/s, MFU, hours for 25k rows with TTA
# Knobs: RESULTS (bench/results/gpu_check), MD (bench/results/gpu_check.md).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
if [ "$DRY_RUN" = "1" ]; then  # never overwrite a real GPU result with a dry run
  RESULTS=${RESULTS:-$(mktemp -d)}; MD=${MD:-$RESULTS/gpu_check.md}
else
  RESULTS=${RESULTS:-bench/results/gpu_check}; MD=${MD:-bench/results/gpu_check.md}
fi
mkdir -p "$RESULTS"
STEPS_JSON="$RESULTS/steps.json"
echo "[]" > "$STEPS_JSON"
FAILED=0

record() {  # name rc seconds -> appended to steps.json
  python - "$STEPS_JSON" "$1" "$2" "$3" <<'PY'
import json, sys
path, name, rc, secs = sys.argv[1:]
steps = json.load(open(path))
steps.append({"name": name, "rc": int(rc), "seconds": int(secs)})
json.dump(steps, open(path, "w"), indent=1)
PY
}

step() {  # name timeout_s cmd...
  local name=$1 limit=$2; shift 2
  echo "== $name (timeout ${limit}s): $*"
  if [ "$DRY_RUN" = "1" ]; then record "$name" 0 0; return; fi
  local start=$SECONDS rc=0
  timeout "$limit" "$@" || rc=$?
  record "$name" "$rc" $((SECONDS - start))
  if [ "$rc" != "0" ]; then echo "!! $name failed (exit $rc)"; FAILED=1; fi
}

if [ "$DRY_RUN" = "0" ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA GPU here; bash bench/gpu_check.sh --dry-run checks the script on a CPU" >&2
  exit 2
fi

# facts run in a dry run too (CPU-checkable)
python bench/gpu_check.py facts --out "$RESULTS/facts.json" > /dev/null
python -c "import json; print(json.dumps(json.load(open('$RESULTS/facts.json')), indent=1))"

step deepspeed 100 python -m pytest -q -m gpu -x tests/test_gpu.py -k deepspeed
step pytest_gpu 150 python -m pytest -q -m gpu -k "not deepspeed"
step gemma_layer 100 python bench/gpu_check.py gemma_layer --out "$RESULTS/gemma_layer.json"
step gemma_full 100 python bench/gpu_check.py gemma_full --rows 32 --batch 8 --out "$RESULTS/gemma_full.json"

python bench/gpu_check.py report --results "$RESULTS" --md "$MD" > /dev/null
echo "== wrote $MD"
exit "$FAILED"
