"""ACDC protocol: supervised, UniMatch and SAM-Match (decoder / full) on equal budgets.

    python benchmarks/acdc.py --profile cpu-quick                 # the 2-core CPU profile
    python benchmarks/acdc.py --profile gpu-paper --cases 3       # the paper's schedule, on a GPU
    python benchmarks/acdc.py --iters 3 --size 64 --limit-unlabeled 4 --limit-val 1 --threads 1  # smoke
    python benchmarks/acdc.py --through-cohort --methods supervised unimatch --threads 1 ...  # issue 17

Data: ``../shared/data/ACDC`` in the SSL4MIS layout (``--data`` for another copy). The labeled split is
the first 32 / 68 / 136 lines of ``train_slices.list`` (``--cases 1 | 3 | 7``, as SSL4MIS, UniMatch and
SAM-Match); every other training slice is unlabeled, its labels hidden from training.
``--limit-unlabeled K`` keeps K unlabeled slices evenly spaced along the list (so every patient range is
represented); the slice list used is written to the output folder as ``train_subset.list``.

Model selection on ``val.list`` only: every ``eval_every`` iterations (and at each stage's end) the
Match model is scored per volume (3D Dice) on val, and the best weights are the ones evaluated, on
``val.list`` by default or on ``--split X.list`` (any list file of volumes the data folder holds).
Reported per method: 3D Dice, HD95 and ASD per class (RV, Myo, LV) and their mean, per volume and
averaged (voxels: the SSL4MIS files store no spacing); for the SAM-Match methods also the pseudo-label
quality at each evaluation point (mean Dice of the Match model's argmax and of SAM's refined labels on
a fixed sample of ``--pseudo-sample`` unlabeled slices against their hidden labels).

Profiles (every value is a flag, e.g. ``--joint-iters 200 --lr 0.02``):

* ``gpu-paper``: the paper's schedule (``preset("paper")``): 256 px, batch 4 + 4, SGD lr 0.01 with poly
  decay, 1000 SAM pre-training steps and 30 000 joint steps, validation every 1000, all unlabeled slices,
  device auto.
* ``cpu-quick``: for the 2-core CPU (about 6 min per baseline, over an hour with SAM-Match there):
  SGD lr 0.05, 128 px (4x fewer UNet FLOPs than 256), 150 supervised warm-up steps (one UNet pass a step: most learning per CPU
  second), 30 SAM steps, 100 joint steps with SAM trained every 4th, 32 unlabeled slices, validation
  every 50 steps, 2 threads; methods supervised, unimatch, samatch-decoder. The SAM image encoder always
  runs at 256 px (about 4-6 s a slice on that CPU): once per slice in ``decoder`` mode (embedding cache),
  but forward and backward on every slice of every step in ``full`` mode, which is why ``samatch-full``
  is only run there when asked for (``--methods ... samatch-full``; hours at this budget on that CPU).

Output (``--out``, default ``benchmarks/results/acdc-<profile>-<timestamp>/``): ``results.json``,
``results.md`` and ``<method>.pt`` (the validation-best Match model with SAM and the settings), which
``napari-samatch evaluate --model <method>.pt --data <SSL4MIS dir> --split <list>`` scores anywhere.

``--through-cohort`` (issue 17): the 140 training volumes are also written as NIfTI files into a temporary
folder (``--cohort-tmp``; ``_acdc_cohort.py``: float32 images, uint8 label files for the volumes of the
labeled cases only) and read back through the cohort path of ``napari-samatch train --images DIR --labels
DIR`` (lazy slices); the same ``--limit-unlabeled`` slices are kept. By default the cohort reproduces the
SSL4MIS run: ``--cohort-order list`` names the files by their rank in the list and stacks each volume's slices
in the list's order (the engine draws by position, so the order is the random stream), and ``--cohort-labels
complete`` reads the label files as complete (``--labels-complete``: the labeled cases' all-background slice is
labeled, as in SSL4MIS). ``--cohort-order volume`` (files named by volume, slices by number) and
``--cohort-labels painted`` (painted slices only) give the cohort a user would write without this intent.
The slices of both paths are compared one by one (values, split, order), then every method is trained on the
same schedule and seed as ``ssl4mis`` (the usual run) and ``cohort`` (the cohort path's slices), and on
request ``control`` (the SSL4MIS arrays in the cohort's order and with its split, stacked in memory: equal to
``cohort`` iff the cohort path reads the same values and the engine's lazy and stacked paths agree). Results
in ``<out>/{ssl4mis,cohort,control}/`` and ``<out>/through_cohort.json``; the Dice side by side at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import _protocol as proto
from napari_samatch.core.data import datasets
from napari_samatch.core.data.io import read_ssl4mis_volumes
from napari_samatch.core.data.slices import ACDC_CLASS_NAMES, SliceSet
from napari_samatch.core.errors import SamatchError

CASES = {1: 32, 3: 68, 7: 136}  # labeled slices per number of labeled patients (SSL4MIS convention)


def load_train(root: Path, labeled: int, limit_unlabeled: int | None, out: Path) -> SliceSet:
    """The labeled split plus all (or ``limit_unlabeled`` evenly spaced) unlabeled slices."""
    if limit_unlabeled is None:
        data, _ = datasets.ssl4mis(root, labeled=labeled, val_list=None)
        return data
    ids = [ln.strip() for ln in (root / "train_slices.list").read_text().splitlines() if ln.strip()]
    pool = ids[labeled:]
    pick = proto.evenly_spaced(len(pool), limit_unlabeled)
    subset = out / "train_subset.list"
    subset.write_text("\n".join(ids[:labeled] + [pool[i] for i in pick]) + "\n")
    return datasets.ssl4mis_slices(root, labeled_count=labeled, list_file=str(subset.resolve()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=proto.SHARED_DATA / "ACDC", help="SSL4MIS-layout ACDC folder")
    ap.add_argument("--cases", type=int, choices=sorted(CASES), default=3, help="labeled patients: 1, 3 or 7")
    ap.add_argument("--split", default="val.list", help="list file of volumes to report on (default val.list)")
    ap.add_argument("--through-cohort", action="store_true",
                    help="also train on the training volumes written as NIfTI and read by the cohort path")
    ap.add_argument("--cohort-tmp", type=Path, default=None, help="parent of the temporary NIfTI cohort folder")
    ap.add_argument("--cohort-runs", nargs="+", choices=["ssl4mis", "cohort", "control"],
                    default=["ssl4mis", "cohort"], help="which of the three trainings to run")
    ap.add_argument("--cohort-order", choices=["list", "volume"], default="list",
                    help="cohort files in the list's order (default: the SSL4MIS run's draws) or named by volume, "
                         "slices by number")
    ap.add_argument("--cohort-labels", choices=["complete", "painted"], default="complete",
                    help="label files read as complete (--labels-complete, default) or painted slices only")
    proto.add_protocol_flags(ap)
    args = ap.parse_args(argv)
    proto.check_settings(args, ACDC_CLASS_NAMES)

    root = args.data.resolve()
    if not (root / "train_slices.list").is_file():
        print(f"acdc.py: no ACDC data at {root} (expected train_slices.list there; see "
              "../shared/data/README.md, or give --data)", file=sys.stderr)
        return 2
    sched = proto.schedule(args)
    # the evaluation lists first: a wrong --split fails before the training slices are read
    val_vols = read_ssl4mis_volumes(root, "val.list")[: args.limit_val]
    eval_vols = val_vols if args.split == "val.list" else read_ssl4mis_volumes(root, args.split)[: args.limit_val]
    val = datasets.slices_from_volumes(val_vols, len(ACDC_CLASS_NAMES), ACDC_CLASS_NAMES)
    args.out = proto.output_dir("acdc", args)
    labeled = CASES[args.cases]
    data = load_train(root, labeled, sched["limit_unlabeled"], args.out)

    n_unl = len(data.unlabeled_indices())
    note = (f"ACDC at {root}: {args.cases} case(s) = {labeled} labeled slices (first lines of train_slices.list), "
            f"{n_unl} unlabeled slices{' (evenly spaced subset)' if sched['limit_unlabeled'] is not None else ''}; "
            f"model selection on {len(val_vols)} val.list volume(s); scores on {len(eval_vols)} {args.split} "
            f"volume(s){' (the selection split itself)' if args.split == 'val.list' else ''}.")
    extra = {"data": str(root), "cases": args.cases, "labeled": labeled, "unlabeled": n_unl,
             "val_volumes": [v.name for v in val_vols], "eval_volumes": [v.name for v in eval_vols]}
    commands: list[str] = []

    def print_command(row: dict) -> None:
        # the exported file is what `evaluate` needs; it scores the full list, on the CPU
        cmd = (f"napari-samatch evaluate --model {row['model']} --data {root} --split {args.split} "
               f"--out {Path(row['model']).with_suffix('')}-{Path(args.split).stem}.json")
        row["evaluate_command"] = cmd
        commands.append(cmd)
        print(f"   re-score: {cmd}", flush=True)

    title = f"ACDC, {args.cases} labeled case(s), profile {args.profile}"
    if args.through_cohort:
        return through_cohort(args, root, labeled, data, val, eval_vols, title, note, extra)
    proto.run_all("acdc", args, title, data, val, eval_vols, args.split, note, extra,
                  metrics=("dice", "hd95", "asd"), after_method=print_command)
    print("Re-score any exported model on an SSL4MIS folder with:\n  " + "\n  ".join(commands))
    return 0


def through_cohort(args, root: Path, labeled: int, data: SliceSet, val: SliceSet, eval_vols, title: str,
                   note: str, extra: dict) -> int:
    """Issue 17: the same protocol through the cohort path; the slices compared, then the three runs."""
    import _acdc_cohort as ac

    out = args.out
    ids = [ln.strip() for ln in (root / "train_slices.list").read_text().splitlines() if ln.strip()]
    as_listed, complete = args.cohort_order == "list", args.cohort_labels == "complete"
    if complete and not ac.whole_volumes(root, set(ids[:labeled])):
        raise SamatchError(f"The first {labeled} listed slices cut a volume, so complete label files cannot say "
                           "this split; use --cohort-labels painted.")
    id_map = ac.cohort_id_map(root, as_listed=as_listed)
    report: dict = {"title": title, "commit": proto.git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
                    "schedule": proto.schedule(args), "seed": args.seed, "cohort_order": args.cohort_order,
                    "cohort_labels": args.cohort_labels}
    with tempfile.TemporaryDirectory(prefix="samatch-acdc-cohort-", dir=args.cohort_tmp) as tmp:
        t0 = time.perf_counter()
        images, labels = ac.write_cohort(root, Path(tmp), set(ids[:labeled]), as_listed=as_listed)
        report["written"] = {"volumes": len(list(images.iterdir())), "label_files": len(list(labels.iterdir())),
                             "mib": round(ac.folder_mib(Path(tmp)), 1), "seconds": round(time.perf_counter() - t0, 1)}
        cohort = ac.restrict(ac.cohort_data(images, labels, labels_complete=complete),
                             {id_map[sid] for sid in data.ids})
        cmp = ac.compare(data, cohort, id_map)
        report["slices"] = cmp
        print(f"cohort: {report['written']}\nslices (ssl4mis, cohort): {cmp['slices']}, labeled {cmp['labeled']}, "
              f"unlabeled {cmp['unlabeled']}; images differ: {len(cmp['image_differs'])}, labels differ: "
              f"{len(cmp['label_differs'])}, split differs: {cmp['split_differs']}; same order: {cmp['same_order']} "
              f"(labeled {cmp['same_labeled_order']}, unlabeled {cmp['same_unlabeled_order']})", flush=True)
        control = ac.as_cohort(data, id_map, list(cohort.ids), labels_complete=complete)
        sets = {k: v for k, v in {"ssl4mis": data, "cohort": cohort, "control": control}.items()
                if k in args.cohort_runs}
        runs = {}
        for name, ds in sets.items():
            args.out = out / name
            args.out.mkdir(parents=True, exist_ok=True)
            n_lab, n_unl = len(ds.labeled_indices()), len(ds.unlabeled_indices())
            runs[name] = proto.run_all("acdc", args, f"{title} [{name}]", ds, val, eval_vols, args.split,
                                       f"{note} [{name}: {n_lab} labeled, {n_unl} unlabeled]", extra,
                                       metrics=("dice", "hd95", "asd"))
    args.out = out
    rows = []
    print(f"\nmean Dice on {args.split} ({len(eval_vols)} volumes), seed {args.seed}:")
    print("".join(f"{name:>9s}" for name in ["method", *sets])
          + "  equal (mean Dice; Dice per volume; selected weights; validation curve)")
    pairs = [(a, b) for a, b in (("cohort", "ssl4mis"), ("cohort", "control")) if a in sets and b in sets]
    for k, method in enumerate(sched_methods(runs)):
        got = {name: runs[name]["runs"][k] for name in sets}
        dice = {name: r["scores"]["mean"]["dice"] for name, r in got.items()}
        # every volume's every metric, as written to results.json
        per_vol = {name: json.dumps(r["scores"]["per_volume"], default=str) for name, r in got.items()}
        # the validation curve covers the steps after the selected point too (e.g. a joint stage that scored lower)
        curve = {name: [(h["stage"], h["iteration"], h["val_mean_dice"])
                        for h in r["history"] if "val_mean_dice" in h] for name, r in got.items()}
        equal = {f"{a}={b}": [dice[a] == dice[b], per_vol[a] == per_vol[b],
                              same_weights(got[a]["model"], got[b]["model"]), curve[a] == curve[b]] for a, b in pairs}
        rows.append({"method": method, "dice": dice, "equal_dice_pervolume_weights_curve": equal,
                     "selected": {name: r["selected"] for name, r in got.items()},
                     "wall_s": {name: r["wall_s"] for name, r in got.items()}})
        print(f"{method:>9s}" + "".join(f"{d:9.4f}" for d in dice.values()) + "  "
              + "; ".join(f"{p}: {v}" for p, v in equal.items()))
    report["dice"] = rows
    (out / "through_cohort.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out / 'through_cohort.json'}")
    return 0


def sched_methods(runs: dict) -> list[str]:
    first = next(iter(runs.values()))
    return [r["method"] for r in first["runs"]]


def same_weights(a: str, b: str) -> bool:
    """The two exported models' UNet weights are bit for bit the same."""
    import torch

    wa, wb = (torch.load(p, map_location="cpu", weights_only=False)["unet"] for p in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


if __name__ == "__main__":
    raise SystemExit(proto.cli(main))
