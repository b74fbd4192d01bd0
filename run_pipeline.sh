#!/usr/bin/env bash
# run_pipeline.sh <fold> — the LMSYS per-fold loop of the 1st-place recipe, one fold at a time.
#
#   post-pretrain (once per model, if UT data exists) -> train each teacher -> teacher logits
#   -> merge logits into the student's data -> distill the student
#
# Hardware: one 8xA100-80GB (or H100) node for configs/a100x8.yaml (QLoRA 70B teachers under DeepSpeed
# ZeRO-2); any CPU for configs/tiny.yaml (minutes). Run `sh run_data.sh` first.
#
# Examples:
#   sh run_pipeline.sh 0                                   # production profile, all visible GPUs
#   CONFIG=configs/tiny.yaml sh run_pipeline.sh 0          # tiny CPU profile
#   NGPU=4 sh run_pipeline.sh 1 teacher.epochs=1           # 4 GPUs, a stage override
#   FORCE=1 sh run_pipeline.sh 0                           # redo stages whose outputs exist
# Knobs (environment): CONFIG, NGPU (default: visible GPUs), ACCEL_CONFIG (default zero2), FORCE=1,
# POST_PRETRAIN=0 (skip stage 3), LOGITS_MODE=oof (true out-of-fold logits; needs all folds' teachers).
# Extra arguments are overrides passed to every stage: scope them as section.key=value
# (e.g. distill.temperature=2, common.seed=1).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
. "$(dirname "$0")/src/runbook.sh"
runbook_help "$0" "$@"
cd "$(dirname "$0")"

FOLD=${1:?usage: sh run_pipeline.sh <fold> [section.key=value ...]}
shift
export CONFIG=${CONFIG:-configs/a100x8.yaml}
runbook_fold "$FOLD" "$@"
FORCE_ARG=(); [ "${FORCE:-0}" = "1" ] && FORCE_ARG=(force=true)
NGPU=${NGPU:-$(python -c "import torch; print(torch.cuda.device_count())")}
ACCEL_CONFIG=${ACCEL_CONFIG:-configs/accelerate/zero2.yaml}
LOGITS_MODE=${LOGITS_MODE:-in_sample}
if [ "$NGPU" -gt 1 ]; then
  LAUNCH=(accelerate launch --config_file "$ACCEL_CONFIG" --num_processes "$NGPU")
else
  LAUNCH=(python)
fi
TEACHERS=$(PYTHONPATH=src python -m arena_distill.config --config "$CONFIG" get common.teachers "$@")
STUDENT=$(PYTHONPATH=src python -m arena_distill.config --config "$CONFIG" get common.student "$@")
PROCESSED=$(PYTHONPATH=src python -m arena_distill.config --config "$CONFIG" get common.processed_dir "$@")
echo "== run_pipeline fold $FOLD | config $CONFIG | teachers: $TEACHERS | student: $STUDENT | launcher: ${LAUNCH[*]}"
stage_start() { echo; echo "== [$(date +%H:%M:%S)] $*"; SECONDS_START=$SECONDS; }
stage_end() { echo "== done in $((SECONDS - SECONDS_START)) s"; }

# --- 3. post-pretrain every model on the UT data (kept across folds; skipped when done) -------------
if [ "${POST_PRETRAIN:-1}" = "1" ]; then
  for M in $TEACHERS $STUDENT; do
    if [ -f "$PROCESSED/${M}_ut/DONE.json" ]; then
      stage_start "post-pretrain $M"
      "${LAUNCH[@]}" src/03_post_pretrain.py --config "$CONFIG" model="$M" "${FORCE_ARG[@]}" "$@"
      stage_end
    else
      echo "== no UT data for $M ($PROCESSED/${M}_ut): post-pretrain skipped"
    fi
  done
fi

# --- 4. teachers, in profile order ------------------------------------------------------------------
for T in $TEACHERS; do
  stage_start "teacher $T fold $FOLD"
  "${LAUNCH[@]}" src/04_train_teacher.py --config "$CONFIG" model="$T" fold="$FOLD" "${FORCE_ARG[@]}" "$@"
  stage_end
done

# --- 5. teacher logits for the student's training rows ----------------------------------------------
for T in $TEACHERS; do
  stage_start "logits $T fold $FOLD ($LOGITS_MODE)"
  "${LAUNCH[@]}" src/05_teacher_logits.py --config "$CONFIG" model="$T" fold="$FOLD" mode="$LOGITS_MODE" \
    "${FORCE_ARG[@]}" "$@"
  stage_end
done

# --- 6. merge logits into the student's fold data ---------------------------------------------------
stage_start "merge logits fold $FOLD"
python src/06_merge_logits.py --config "$CONFIG" fold="$FOLD" "${FORCE_ARG[@]}" "$@"
stage_end

# --- 7. distill the student -------------------------------------------------------------------------
stage_start "distill $STUDENT fold $FOLD"
"${LAUNCH[@]}" src/07_distill_student.py --config "$CONFIG" fold="$FOLD" "${FORCE_ARG[@]}" "$@"
stage_end

SAVE=$(PYTHONPATH=src python -m arena_distill.config --config "$CONFIG" get common.save_dir "$@")
echo; echo "== fold $FOLD finished. CV so far ($SAVE/cv_table.md):"; cat "$SAVE/cv_table.md"
