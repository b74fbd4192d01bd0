#!/usr/bin/env bash
# run_final.sh — the LMSYS final stages: average the student's fold adapters and merge them into the base,
# GPTQ-quantize the merged model (with the fp vs quantized check), optionally predict the test set, report.
#
#   8.  src/08_average_merge.py   model_save/<student>fold<k>/ -> <student>_avg/ + final_merged/
#   9.  src/09_quantize.py        final_merged/ -> final_model_gptq/ (+ quant_report.json: fp vs quantized)
#   -   predict_test.py           only with PREDICT=1 (test.csv -> sub/submission.csv); usually run on its own
#   10. src/10_report.py          sub/cv_report.md + sub/reliability.png (out-of-fold) + sub/curves/*.png
#   11. src/11_publish.py         only with PUSH_TO_HUB=<user>/<name>: model card + Hub upload (HF_TOKEN)
#
# Hardware: one GPU is enough (merge of a 9B student in fp32 ~40 GB; GPTQ 8-bit of 9B ~15-30 min on an A100);
# the tiny profile runs on CPU in about a minute. Run `sh run_pipeline.sh <fold>` for every fold first.
#
# Examples:
#   sh run_final.sh                                          # production profile (configs/a100x8.yaml)
#   CONFIG=configs/tiny.yaml sh run_final.sh                 # tiny CPU profile
#   sh run_final.sh quantize.bits=4 quantize.out_dir=model_save/final_model_gptq4
#   sh run_final.sh average.method=delta_mean                # exact delta averaging instead of the seed's
#   FORCE=1 sh run_final.sh                                  # redo stages whose outputs are done
#   PREDICT=1 NGPU=2 sh run_final.sh                         # + predict on 2 GPUs (both TTA orders at once)
#   PUSH_TO_HUB=me/arena-judge-9b sh run_final.sh            # + model card and upload (private repo)
# Knobs (environment): CONFIG (default configs/a100x8.yaml), FORCE=1 (force=true to stages 8 and 9),
# PREDICT=1 (run predict_test.py before the report), NGPU (processes for prediction; default: visible GPUs).
# Extra arguments are overrides passed to every step: scope them as section.key=value
# (average.*, quantize.*, predict.*, report.*, common.*).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
. "$(dirname "$0")/src/runbook.sh"
runbook_help "$0" "$@"
cd "$(dirname "$0")"

export CONFIG=${CONFIG:-configs/a100x8.yaml}
FORCE_ARG=(); [ "${FORCE:-0}" = "1" ] && FORCE_ARG=(force=true)
PREDICT=${PREDICT:-0}
NGPU=${NGPU:-$(python -c "import torch; print(torch.cuda.device_count())")}
export GPTQMODEL_CPU_WORKERS=${GPTQMODEL_CPU_WORKERS:-2}   # GPTQModel's CPU worker pool fails on small machines
STUDENT=$(PYTHONPATH=src python -m arena_distill.config --config "$CONFIG" get common.student "$@")
echo "== run_final | config $CONFIG | student $STUDENT | predict $PREDICT (NGPU $NGPU)"
stage_start() { echo; echo "== [$(date +%H:%M:%S)] $*"; SECONDS_START=$SECONDS; }
stage_end() { echo "== done in $((SECONDS - SECONDS_START)) s"; }

# --- 8. average the fold adapters and merge into the base (+ lora_mean vs delta_mean held-out check) --------
stage_start "average + merge $STUDENT"
python src/08_average_merge.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@"
stage_end

# --- 9. GPTQ quantization of the merged model (+ fp vs quantized held-out check) ----------------------------
stage_start "quantize"
python src/09_quantize.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@"
stage_end

# --- predict (optional here; `python predict_test.py` is the usual entry point) ------------------------------
if [ "$PREDICT" = "1" ]; then
  stage_start "predict test set"
  if [ "$NGPU" -gt 1 ]; then
    torchrun --standalone --nproc_per_node "$NGPU" predict_test.py --config "$CONFIG" "$@"
  else
    python predict_test.py --config "$CONFIG" "$@"
  fi
  python src/validate_submission.py \
    "$(PYTHONPATH=src python -m arena_distill.config --config "$CONFIG" get predict.out "$@")"
  stage_end
fi

# --- 10. report ----------------------------------------------------------------------------------------------
stage_start "report"
python src/10_report.py --config "$CONFIG" "$@"
stage_end
# --- 11. publish (only with PUSH_TO_HUB=<user>/<name>): model card + upload through huggingface_hub ---------
if [ -n "${PUSH_TO_HUB:-}" ]; then
  stage_start "publish to $PUSH_TO_HUB"
  HF_HUB_OFFLINE=0 python src/11_publish.py --config "$CONFIG" "publish.push_to_hub=$PUSH_TO_HUB" "$@"
  stage_end
fi
echo; echo "== final stages done: model_save/final_model_gptq/ is ready; next: python predict_test.py"
