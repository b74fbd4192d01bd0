#!/usr/bin/env bash
# build_wheels.sh — the offline wheel bundle for Kaggle notebooks (no internet there): every package the
# inference path needs at the project's pins, minus what the Kaggle image already has (its CUDA torch first).
#
# Run where there is internet, on Linux x86_64 with the notebook's Python version (wheels are chosen for the
# notebook's platform):
#   sh kaggle/build_wheels.sh                       # -> kaggle/wheels/ (+ kaggle/wheels/bundle.txt, the exact list)
#   OUT=/tmp/wheels PY=3.12 sh kaggle/build_wheels.sh   # another target Python (match the notebook's `python -V`)
# Then upload the folder as a Kaggle dataset (e.g. `kaggle datasets create -p kaggle/wheels`) and attach it;
# kaggle/predict_kaggle.sh installs from it with `pip install --no-index --no-deps`.
#
# How: (1) resolve the full dependency closure of kaggle/requirements-kaggle.in with a pip of the notebook's
# Python (pip install --dry-run --report: metadata only, nothing installed); (2) drop the packages the image
# keeps (KEEP_FROM_IMAGE: torch and its CUDA libraries, numpy, pandas, ...: replacing them would break the
# image's torch); (3) pip download --no-deps exactly the remaining name==version as wheels for the notebook's
# platform, building a wheel here for a package published as an sdist only. Knobs: OUT, PY (3.11), PLATFORM
# (manylinux2014_x86_64), PIP (python3 -m pip; its Python must be PY), KEEP_FROM_IMAGE.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-kaggle/wheels}
PY=${PY:-3.11}
PLATFORM=${PLATFORM:-manylinux2014_x86_64}
PIP=${PIP:-python3 -m pip}
# Packages the Kaggle image provides and the notebook must keep (regex on the normalized name).
KEEP_FROM_IMAGE=${KEEP_FROM_IMAGE:-'^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|numpy|pandas|pyarrow|scipy|scikit-learn|pillow|requests|urllib3|certifi|idna|charset-normalizer|packaging|setuptools|pip|wheel|jinja2|markupsafe|sympy|mpmath|networkx|fsspec|filelock|typing-extensions|psutil|python-dateutil|pytz|tzdata|six)$'}
PLATFORMS=(--platform "$PLATFORM" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform linux_x86_64 --platform any)
TARGET=(--only-binary=:all: --python-version "$PY" --implementation cp "${PLATFORMS[@]}")

mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

have=$($PIP --version | sed -E 's/.*\(python ([0-9]+\.[0-9]+)\).*/\1/')
if [ "$have" != "$PY" ]; then
  echo "build_wheels.sh: resolving needs the notebook's Python ($PY); this pip runs Python $have (set PIP=...)" >&2
  exit 2
fi
echo "== resolve kaggle/requirements-kaggle.in (Python $PY; metadata only, nothing is installed)"
$PIP install --dry-run --ignore-installed --quiet --report "$work/report.json" -r kaggle/requirements-kaggle.in

python3 - "$work/report.json" "$KEEP_FROM_IMAGE" > "$work/bundle.txt" <<'PY'
import json, re, sys
report, keep = json.load(open(sys.argv[1])), re.compile(sys.argv[2])
for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
    name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
    if not keep.match(name):
        print(f"{name}=={item['metadata']['version']}")
PY
echo "== $(wc -l < "$work/bundle.txt") packages after leaving the image's own out"

# A binary wheel for the notebook's platform when the index has one; else build one here with --no-deps
# (gptqmodel 7.6.0 is published as an sdist only: without a CUDA toolkit its build is pure Python,
# py3-none-any, which is what the notebook needs: it compiles nothing and loads the torch kernels).
built=()
while read -r req; do
  if ! $PIP download --no-deps --quiet -d "$OUT" "${TARGET[@]}" "$req" 2>/dev/null; then
    $PIP wheel --no-deps --quiet -w "$OUT" "$req"
    built+=("$req")
  fi
done < "$work/bundle.txt"
cp "$work/bundle.txt" "$OUT/bundle.txt"
n=$(ls "$OUT"/*.whl | wc -l)
size=$(du -sh "$OUT" | cut -f1)
echo "== $OUT: $n wheels, $size (list: $OUT/bundle.txt); built here from sdists: ${built[*]:-none}"
