#!/usr/bin/env bash
# run_tiny.sh — the whole LMSYS flow on CPU with tiny random-weight models and the generated sample
# data: the CPU twin of the production runbooks (same scripts, configs/tiny.yaml instead of a100x8).
#
#   data (sample + tiny models + folds) -> fold(s): post-pretrain, teachers, logits, distill
#   -> average + merge + GPTQ 8-bit + report -> predict test.csv -> sub/submission.csv
#
# Hardware: any 2-core CPU; about 10-15 minutes for one fold. Nothing is downloaded.
# Examples:
#   sh run_tiny.sh                 # fold 0
#   FOLDS="0 1" sh run_tiny.sh     # two folds (the final average uses every finished fold)
#   FORCE=1 sh run_tiny.sh         # redo every stage
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
. "$(dirname "$0")/src/runbook.sh"
runbook_help "$0" "$@"
cd "$(dirname "$0")"
export CONFIG=configs/tiny.yaml
FOLDS=${FOLDS:-0}
for FOLD in $FOLDS; do runbook_fold "$FOLD" "$@"; done   # every fold checked before the first stage
SECONDS=0

# --- data: sample data, tiny models + tokenizers, folds, tokenized processed data ----------------------
sh run_data.sh "$@"

# --- per fold: post-pretrain, teachers, logits, merge, distillation -----------------------------------
for FOLD in $FOLDS; do
  sh run_pipeline.sh "$FOLD" "$@"
done

# --- final: average the fold adapters, merge, quantize (GPTQ 8-bit), report ---------------------------
sh run_final.sh "$@"

# --- predict test.csv with A/B-swap TTA into sub/submission.csv ----------------------------------------
python predict_test.py --config "$CONFIG" "$@"
# the report again, now that the prediction report exists (stage 10 only reads files: a few seconds)
python src/10_report.py --config "$CONFIG" "$@"

echo "== run_tiny.sh finished in ${SECONDS}s: sub/submission.csv"
