#!/usr/bin/env bash
# predict_kaggle.sh — the inference entry of a Kaggle notebook (2 x T4, no internet), with the Kaggle profile
# configs/kaggle_2xt4.yaml (fp16, length-sorted batches of <= 8192 padded tokens, A/B-swap TTA, GPTQ model).
#
# Attach three datasets to the notebook (names are defaults; override with the variables below):
#   CODE   /kaggle/input/arena-distill-code     this repository (src/, configs/, predict_test.py, kaggle/)
#   WHEELS /kaggle/input/arena-distill-wheels   the bundle kaggle/build_wheels.sh makes (see kaggle/README.md)
#   MODEL  /kaggle/input/arena-judge-gptq       the quantized judge (model_save/final_model_gptq/, stage 9)
# plus the competition data (the profile reads /kaggle/input/lmsys-chatbot-arena/test.csv).
# Notebook cell:  !bash /kaggle/input/arena-distill-code/kaggle/predict_kaggle.sh
# Writes /kaggle/working/submission.csv (validated before it lands) and /kaggle/working/predict_report.json.
# Time: ~25k test rows x 2 orders on 2 x T4 fit the 9-hour limit with room (docs/gpu.md, src/plan.py).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

CODE=${CODE:-/kaggle/input/arena-distill-code}
WHEELS=${WHEELS:-/kaggle/input/arena-distill-wheels}
MODEL=${MODEL:-/kaggle/input/arena-judge-gptq}
OUT=${OUT:-/kaggle/working/submission.csv}
NGPU=${NGPU:-2}

# Offline install: exactly the bundled wheels (--no-deps: the image's CUDA torch, numpy and pandas stay).
pip install --no-index --no-deps --quiet --find-links "$WHEELS" -r "$WHEELS/bundle.txt"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GPTQMODEL_CPU_WORKERS=2
export PYTHONDONTWRITEBYTECODE=1   # /kaggle/input is read-only

cd "$CODE"
python src/plan.py --config configs/kaggle_2xt4.yaml || true   # memory plan for this box (informational)
torchrun --standalone --nproc_per_node "$NGPU" predict_test.py --config configs/kaggle_2xt4.yaml \
  "predict.gptq_dir=$MODEL" "predict.out=$OUT" "$@"
python src/validate_submission.py "$OUT"
