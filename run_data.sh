#!/usr/bin/env bash
# run_data.sh — LMSYS data: sample data (when no real data), tiny models (tiny profile), tokenized folds.
#
#   0. src/00_make_sample_data.py   only when the train file is missing (or SAMPLE=1)
#   1. src/01_build_tiny_models.py  only when the profile has a non-empty `tiny_models` section
#   2. src/02_prepare_data.py       folds.csv + data/processed_data/<model>fold<k>/ for every teacher and
#                                   the student, <model>_ut/, report.{json,md}
#
# Hardware: CPU only. Tiny profile: ~1 minute on 2 cores. Production (57k Kaggle rows + 33k, three
# tokenizers, max_length 1024): a few minutes on a multi-core node.
#
# Examples:
#   CONFIG=configs/tiny.yaml sh run_data.sh                     # tiny CPU profile, sample data
#   sh run_data.sh                                              # production profile (configs/a100x8.yaml)
#   sh run_data.sh prepare.truncation_side=left                 # an override for one stage
#   sh run_data.sh prepare.train_csv=/kaggle/input/lmsys-chatbot-arena/train.csv prepare.use_33k=false
#   FORCE=1 sh run_data.sh                                      # rebuild outputs that are already done
#   SAMPLE=1 CONFIG=configs/tiny.yaml sh run_data.sh            # (re)write the sample data first
# Knobs (environment): CONFIG (default configs/a100x8.yaml), FORCE=1 (force=true to every stage),
# SAMPLE=1 (run stage 0 even when a train file exists; it never overwrites real Kaggle data).
# Extra arguments are overrides passed to every stage: scope them as section.key=value
# (sample.*, tiny_models.*, prepare.*, common.*).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
. "$(dirname "$0")/src/runbook.sh"
runbook_help "$0" "$@"
cd "$(dirname "$0")"

export CONFIG=${CONFIG:-configs/a100x8.yaml}
FORCE_ARG=(); [ "${FORCE:-0}" = "1" ] && FORCE_ARG=(force=true)
DATA_DIR=$(PYTHONPATH=src python -m arena_distill.config --config "$CONFIG" get common.data_dir "$@")
TRAIN_CSV=$(PYTHONPATH=src python -m arena_distill.config --config "$CONFIG" get prepare.train_csv "$@")
TRAIN_CSV=${TRAIN_CSV:-$DATA_DIR/train.csv}
HAS_TINY=$(PYTHONPATH=src python -c "import sys; from arena_distill.config import read_profile; \
print(1 if read_profile(sys.argv[1]).get('tiny_models') else 0)" "$CONFIG")
echo "== run_data | config $CONFIG | train file $TRAIN_CSV"
stage_start() { echo; echo "== [$(date +%H:%M:%S)] $*"; SECONDS_START=$SECONDS; }
stage_end() { echo "== done in $((SECONDS - SECONDS_START)) s"; }

# --- 0. sample data, only without real data -------------------------------------------------------
if [ ! -f "$TRAIN_CSV" ] || [ "${SAMPLE:-0}" = "1" ]; then
  stage_start "sample data -> $DATA_DIR"
  python src/00_make_sample_data.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@"
  stage_end
fi

# --- 1. tiny models (profiles with a tiny_models section; production downloads real checkpoints) ---
if [ "$HAS_TINY" = "1" ]; then
  stage_start "tiny models"
  python src/01_build_tiny_models.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@"
  stage_end
fi

# --- 2. parse, fold, tokenize per model -----------------------------------------------------------
stage_start "prepare data"
python src/02_prepare_data.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@"
stage_end
