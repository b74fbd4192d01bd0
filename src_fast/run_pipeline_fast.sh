#!/usr/bin/env bash
# src_fast/run_pipeline_fast.sh <fold> — distillation only, from stored teacher logits.
#
# The seed ships the 70B teachers' logits inside the student's processed data
# (data/processed_data/<student>fold<k>/train.parquet, columns logits_<teacher>), so users can skip
# teacher training. This runbook checks they are there, then distills the student (stage 7), starting
# from the post-pretrained student adapter model_save/<student>_ut/ when present.
# Hardware: 8 GPUs for the 9B student in bf16 LoRA (or 1 GPU, slower); CPU with configs/tiny.yaml.
#
# Examples:
#   sh src_fast/run_pipeline_fast.sh 0
#   CONFIG=configs/tiny.yaml sh src_fast/run_pipeline_fast.sh 0 distill.temperature=2
# Knobs: CONFIG, NGPU, ACCEL_CONFIG (default configs/accelerate/ddp.yaml), FORCE=1.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
. "$(dirname "$0")/../src/runbook.sh"
runbook_help "$0" "$@"
cd "$(dirname "$0")/.."

FOLD=${1:?usage: sh src_fast/run_pipeline_fast.sh <fold> [section.key=value ...]}
shift
export CONFIG=${CONFIG:-configs/a100x8.yaml}
runbook_fold "$FOLD" "$@"
FORCE_ARG=(); [ "${FORCE:-0}" = "1" ] && FORCE_ARG=(force=true)
NGPU=${NGPU:-$(python -c "import torch; print(torch.cuda.device_count())")}
ACCEL_CONFIG=${ACCEL_CONFIG:-configs/accelerate/ddp.yaml}
if [ "$NGPU" -gt 1 ]; then
  LAUNCH=(accelerate launch --config_file "$ACCEL_CONFIG" --num_processes "$NGPU")
else
  LAUNCH=(python)
fi
STUDENT=$(PYTHONPATH=src python -m arena_distill.config --config "$CONFIG" get common.student "$@")
PROCESSED=$(PYTHONPATH=src python -m arena_distill.config --config "$CONFIG" get common.processed_dir "$@")
TRAIN="$PROCESSED/${STUDENT}fold${FOLD}/train.parquet"

# --- check the stored logits (stage 7 also refuses missing/NaN columns, naming what to run) ---------
if [ ! -f "$TRAIN" ]; then
  echo "error: $TRAIN not found. Put the shipped processed data there, or run: sh run_data.sh" >&2
  exit 2
fi
python - "$TRAIN" <<'PY'
import sys, pyarrow.parquet as pq
cols = [c for c in pq.read_schema(sys.argv[1]).names if c.startswith("logits_")]
if not cols:
    sys.exit(f"error: {sys.argv[1]} has no logits_<teacher> columns: run sh run_pipeline.sh <fold> (teachers) "
             "or place the shipped data with stored logits")
print("== stored teacher logits:", ", ".join(cols))
PY

# --- 7. distill the student ------------------------------------------------------------------------
echo "== [$(date +%H:%M:%S)] distill $STUDENT fold $FOLD (launcher: ${LAUNCH[*]})"
"${LAUNCH[@]}" src/07_distill_student.py --config "$CONFIG" fold="$FOLD" "${FORCE_ARG[@]}" "$@"
