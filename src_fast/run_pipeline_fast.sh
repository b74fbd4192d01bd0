#!/usr/bin/env bash
# src_fast/run_pipeline_fast.sh <fold> — distillation only, from stored teacher logits.
#
# Stage 7 needs the student's fold data with stored teacher logits (columns logits_<teacher>):
# data/processed_data/<student>fold<k>/train.parquet. Our own pipeline writes them (stages 2, 5, 6). The seed
# does NOT ship them in this format: its data/processed_data/orgemma2fold<k>/train.parquet are pickled pandas
# DataFrames with the template text and the 70B teachers' logits in winner_model_a/b/tie (Qwen2-72B) and
# winner_model_a/b/tie_2 (Llama-3-70B). Set SEED_DATA to the seed's processed_data folder to convert them first
# (arena_distill.seed_artifacts; pickles run code when loaded, so this also needs ALLOW_PICKLE=1: only for
# files you trust). SEED_ADAPTER=<seed>/model_save_or/v7_ut_gemma_v7_64r128_ddgemma2_16bit/epoch_0_model/adapter.bin
# converts the seed's post-pretrained LoRA into model_save/<student>_ut/, where stage 7 starts from it.
# Hardware: 8 GPUs for the 9B student in bf16 LoRA (or 1 GPU, slower); CPU with configs/tiny.yaml.
#
# Examples:
#   sh src_fast/run_pipeline_fast.sh 0
#   SEED_DATA=/path/LMSYS_BlackPearl/data/processed_data ALLOW_PICKLE=1 \
#     SEED_ADAPTER=/path/LMSYS_BlackPearl/model_save_or/v7_ut_gemma_v7_64r128_ddgemma2_16bit/epoch_0_model/adapter.bin \
#     sh src_fast/run_pipeline_fast.sh 0
#   CONFIG=configs/tiny.yaml sh src_fast/run_pipeline_fast.sh 0 distill.temperature=2
# Knobs: CONFIG, NGPU, ACCEL_CONFIG (default configs/accelerate/ddp.yaml), FORCE=1, SEED_DATA, SEED_ADAPTER,
# ALLOW_PICKLE=1.
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

# --- 0. optional: convert the seed's shipped artefacts (fold data with logits, post-pretrained adapter) ----
CONVERT=()
[ -n "${SEED_DATA:-}" ] && CONVERT+=(seed_fold_dir="$SEED_DATA/orgemma2fold${FOLD}" fold="$FOLD")
[ -n "${SEED_DATA:-}" ] && [ "${ALLOW_PICKLE:-0}" = "1" ] && CONVERT+=(allow_pickle=true)
[ -n "${SEED_ADAPTER:-}" ] && CONVERT+=(seed_adapter="$SEED_ADAPTER")
if [ ${#CONVERT[@]} -gt 0 ]; then
  echo "== [$(date +%H:%M:%S)] convert the seed's artefacts: ${CONVERT[*]}"
  PYTHONPATH=src python -m arena_distill.seed_artifacts --config "$CONFIG" "${CONVERT[@]}" "${FORCE_ARG[@]}" "$@"
fi

# --- check the stored logits (stage 7 also refuses missing/NaN columns, naming what to run) ---------
if [ ! -f "$TRAIN" ]; then
  echo "error: $TRAIN not found. Run: sh run_data.sh (and the teachers), or convert the seed's files with SEED_DATA=... ALLOW_PICKLE=1" >&2
  exit 2
fi
python - "$TRAIN" <<'PY'
import sys, pyarrow.parquet as pq
cols = [c for c in pq.read_schema(sys.argv[1]).names if c.startswith("logits_")]
if not cols:
    sys.exit(f"error: {sys.argv[1]} has no logits_<teacher> columns: run sh run_pipeline.sh <fold> (teachers) "
             "or convert the seed's fold files (SEED_DATA=... ALLOW_PICKLE=1)")
print("== stored teacher logits:", ", ".join(cols))
PY

# --- 7. distill the student ------------------------------------------------------------------------
echo "== [$(date +%H:%M:%S)] distill $STUDENT fold $FOLD (launcher: ${LAUNCH[*]})"
"${LAUNCH[@]}" src/07_distill_student.py --config "$CONFIG" fold="$FOLD" "${FORCE_ARG[@]}" "$@"
