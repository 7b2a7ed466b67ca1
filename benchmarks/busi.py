"""BUSI protocol: supervised, UniMatch and SAM-Match (decoder / full) on equal budgets, 30 labeled images.

    python benchmarks/busi.py --profile cpu-quick
    python benchmarks/busi.py --profile gpu-paper --data /path/to/Dataset_BUSI_with_GT
    python benchmarks/busi.py --iters 2 --size 64 --labeled 6 --limit-val 2 --threads 1   # smoke

Data: the original ``Dataset_BUSI_with_GT/{benign,malignant,normal}`` folders (``../shared/data`` holds
only a 20-image sample; the full set has 437 benign, 210 malignant, 133 normal images). Masks
``<name>_mask*.png`` of one image are unioned; 2 classes (background, lesion). Normal images (no lesion)
are left out, as in the SAM-Match paper.

Split (deterministic, written to ``split.json`` in the output folder): within each of benign and
malignant, the images in natural name order are shuffled with ``numpy.random.default_rng(split_seed)``
(``--split-seed``, default 0) and cut 60 / 9 / 31 % into train / val / test (rounded half up; test takes
the rest), so both categories keep their share in every part; on the full set 388 / 58 / 201 images.
``--labeled`` images of train (default 30, the paper's) keep their masks, picked as the first of a
second seeded shuffle of train; the rest of train is unlabeled (masks hidden from training). With fewer
train images than ``--labeled`` (the sample: 12) every train image is labeled, a warning is printed, and
the semi-supervised methods have no unlabeled image (the engine then trains them supervised).

Model selection on val (per-image Dice every ``eval_every`` steps); the selected Match model is scored on
``--split`` (test by default) per image at the image's ORIGINAL resolution (its probabilities are resized
back before the argmax): Dice, HD95 and ASD of the lesion in pixels, averaged over images. The SAM-Match
methods also report pseudo-label quality over training, as benchmarks/acdc.py does.

Profiles and every schedule flag are those of benchmarks/acdc.py (see its docstring and
docs/benchmarks.md). Output: ``results.json``, ``results.md``, ``split.json`` and ``<method>.pt``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import _protocol as proto
from napari_samatch.core.data.io import read_image_folder
from napari_samatch.core.data.slices import SliceSet
from napari_samatch.core.data.volume import Volume

CATEGORIES = ("benign", "malignant")
FRACTIONS = (0.60, 0.09)  # train, val; test is the rest (31 %)
CLASS_NAMES = ["background", "lesion"]


def split_busi(root: Path, seed: int) -> dict[str, list[Volume]]:
    """Stratified train / val / test lists of the benign and malignant images (see the docstring)."""
    parts: dict[str, list[Volume]] = {"train": [], "val": [], "test": []}
    for cat in CATEGORIES:
        folder = root / cat
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing: give --data the Dataset_BUSI_with_GT folder")
        vols = [v for v in read_image_folder(folder) if v.labels is not None]  # natural name order
        order = np.random.default_rng(seed).permutation(len(vols))
        n_train = int(len(vols) * FRACTIONS[0] + 0.5)
        n_val = int(len(vols) * FRACTIONS[1] + 0.5)
        shuffled = [vols[i] for i in order]
        parts["train"] += shuffled[:n_train]
        parts["val"] += shuffled[n_train:n_train + n_val]
        parts["test"] += shuffled[n_train + n_val:]
    return parts


def training_set(train: list[Volume], labeled: int, seed: int,
                 limit_unlabeled: int | None) -> tuple[SliceSet, list[str]]:
    """``labeled`` train images keep their masks; the others (or an evenly spaced subset) are unlabeled."""
    order = np.random.default_rng(seed + 1).permutation(len(train)).tolist()  # independent of the split shuffle
    if labeled > len(train):
        print(f"WARNING: only {len(train)} training images, fewer than --labeled {labeled}: all are labeled and "
              "the semi-supervised methods see no unlabeled image.", flush=True)
        labeled = len(train)
    lab = [train[i] for i in order[:labeled]]
    pool = [train[i] for i in order[labeled:]]
    unl = [pool[i] for i in proto.evenly_spaced(len(pool), limit_unlabeled)]
    data = SliceSet.from_volumes(lab + unl, labeled_volumes=range(len(lab)), num_classes=2, class_names=CLASS_NAMES)
    return data, [v.name for v in lab]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=proto.SHARED_DATA / "Dataset_BUSI_with_GT",
                    help="the Dataset_BUSI_with_GT folder (benign/, malignant/)")
    ap.add_argument("--labeled", type=int, default=30, help="labeled training images (default 30, the paper's)")
    ap.add_argument("--split", choices=["test", "val"], default="test", help="which part to report on")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test and labeled shuffles")
    proto.add_protocol_flags(ap)
    args = ap.parse_args(argv)
    proto.check_settings(args, CLASS_NAMES)

    root = args.data.resolve()
    try:
        parts = split_busi(root, args.split_seed)
    except FileNotFoundError as exc:
        print(f"busi.py: {exc} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    if not parts["val"] or not parts[args.split]:
        print(f"busi.py: too few images in {root} for a val and a {args.split} part.", file=sys.stderr)
        return 2
    sched = proto.schedule(args)
    args.out = proto.output_dir("busi", args)
    data, labeled_names = training_set(parts["train"], args.labeled, args.split_seed, sched["limit_unlabeled"])
    val_vols = parts["val"][: args.limit_val]
    val = SliceSet.from_volumes(val_vols, num_classes=2, class_names=CLASS_NAMES)
    eval_vols = val_vols if args.split == "val" else parts["test"][: args.limit_val]
    split = {k: [v.name for v in vs] for k, vs in parts.items()}
    split["labeled"] = labeled_names
    (args.out / "split.json").write_text(json.dumps({"split_seed": args.split_seed, **split}, indent=2))

    n_lab, n_unl = len(data.labeled_indices()), len(data.unlabeled_indices())
    note = (f"BUSI at {root}: benign + malignant split {len(parts['train'])} / {len(parts['val'])} / "
            f"{len(parts['test'])} (train / val / test, split seed {args.split_seed}); {n_lab} labeled and {n_unl} "
            f"unlabeled training images; model selection on {len(val_vols)} val image(s); scores on "
            f"{len(eval_vols)} {args.split} image(s) at their original resolution.")
    extra = {"data": str(root), "labeled": n_lab, "unlabeled": n_unl, "split_seed": args.split_seed,
             "split_sizes": {k: len(v) for k, v in parts.items()}, "eval_images": [v.name for v in eval_vols]}
    title = f"BUSI, {n_lab} labeled images, profile {args.profile}"
    proto.run_all("busi", args, title, data, val, eval_vols, args.split, note, extra, metrics=("dice", "hd95"))
    return 0


if __name__ == "__main__":
    raise SystemExit(proto.cli(main))
