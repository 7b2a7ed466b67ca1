"""``napari-samatch``: train, predict, evaluate and demo on the same core as the plugin.

Errors the user can fix (bad files, settings, checkpoints) print one sentence and exit with status 2;
a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .console import progress_printer, show_warning
from .core.errors import DataWarning, SamatchError


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (flags and ``--set``), not the preset's."""
    overrides: dict[str, Any] = {}
    for key in ("method", "warmup_iters", "sam_iters", "joint_iters", "size", "device", "seed", "sam_mode",
                "sam_backend", "sam_checkpoint", "batch_labeled", "batch_unlabeled", "threads", "eval_every"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    for item in getattr(args, "set", None) or []:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


CLASS_KEYS = ("num_classes", "class_names")


def _config(args: argparse.Namespace):
    """The run's settings, and the class settings the user gave (``--set`` or ``--config``; not the preset's)."""
    from .core.config import load_config, preset, read_config_file

    overrides = _overrides(args)
    given = dict(read_config_file(args.config)) if getattr(args, "config", None) else {}
    given.update(overrides)
    classes = {k: given[k] for k in CLASS_KEYS if k in given}
    if getattr(args, "config", None):
        return load_config(args.config, preset=args.preset, **overrides), classes
    return preset(args.preset, **overrides), classes


def _write_json(path: Path, obj: Any) -> None:
    from .core.checkpoint import atomic_write_json

    atomic_write_json(path, obj)


def cmd_train(args: argparse.Namespace) -> int:
    """Alone, or as one rank under ``torchrun --nproc_per_node N`` (docs/cluster.md): every rank reads the
    data and trains its share; rank 0 alone prints, checkpoints and exports."""
    from .core.engine import distributed

    distributed.init_from_env()
    try:
        return _train(args, distributed.is_main())
    finally:
        distributed.cleanup()


def _check_train_flags(args: argparse.Namespace) -> None:
    """Contradictory or idle flags are refused: a flag that is silently ignored is a wrong result later."""
    sources = [f for f, v in (("--ssl4mis", args.ssl4mis), ("--folder", args.folder), ("--image", args.image),
                              ("--images", args.images)) if v]
    if len(sources) > 1:
        raise SamatchError(f"Give one data source, not {' and '.join(sources)}: --ssl4mis DIR, --image FILE "
                           "--labels FILE, --images DIR --labels DIR, or --folder DIR.")
    if not sources:
        raise SamatchError("Say what to train on: --ssl4mis DIR, --image FILE --labels FILE, --images DIR --labels "
                           "DIR, or --folder DIR.")
    if args.val_slices is not None and args.val_slices < 0:
        raise SamatchError(f"--val-slices {args.val_slices} is negative; give 0 (no validation) or more.")
    if "checkpoint_dir" in _overrides(args):
        raise SamatchError("checkpoint_dir is --out on the command line (the run's checkpoints, model.pt and "
                           "metrics.json go there); give --out instead.")
    for flag, used, needs in (("--labels", args.labels, ("--image", "--images")),
                              ("--axis", args.axis, ("--image", "--images")),
                              ("--val-slices", args.val_slices, ("--image", "--images")),
                              ("--limit", args.limit, ("--ssl4mis",)), ("--lazy", args.lazy, ("--ssl4mis",)),
                              ("--labels-complete", args.labels_complete or None, ("--images",))):
        if used is not None and sources[0] not in needs:
            alt = " or ".join(needs)
            raise SamatchError(f"{flag} applies only with {alt}, not with {sources[0]}; leave it out or use {alt}.")
    if args.labels_complete and args.labels is None:
        raise SamatchError("--labels-complete says the label files of --labels are complete, but no --labels folder "
                           "was given; add --labels DIR or leave --labels-complete out.")


def _train_outputs(args: argparse.Namespace, out: Path) -> None:
    """Refuse an --out that is an input, and an earlier run's folder without --overwrite (before any work)."""
    from .core.checkpoint import check_writable_folder
    from .core.data.outputs import check_not_an_input, check_run_folder, same_file
    from .core.engine.export import run_file

    resume = run_file(args.resume, "last.pt", "to resume (last.pt)") if args.resume else None
    inputs = {"--ssl4mis": args.ssl4mis, "--folder": args.folder, "--image": args.image, "--images": args.images,
              "--labels": args.labels,
              "--resume": resume, "--config": args.config, "--sam-checkpoint": args.sam_checkpoint}
    targets = [out] + [out / name for name in ("model.pt", "model.pt.sha256", "metrics.json")]
    if not (resume is not None and (out / "last.pt").exists() and same_file(resume, out / "last.pt")):
        targets += [out / "last.pt", out / "last.pt.sha256"]  # else: a resumed run continues in its own folder
    check_not_an_input(targets, inputs, "choose another folder for --out")
    check_writable_folder(out, "Choose another folder for --out.")
    check_run_folder(out, args.overwrite, resume=resume)


def _train(args: argparse.Namespace, main: bool) -> int:
    from .core.data import datasets
    from .core.engine import distributed
    from .core.engine.engine import Engine
    from .core.engine.export import export_model

    out = Path(args.out)
    _check_train_flags(args)
    if main:  # before the data and the models load: a bad --out must not cost a run
        _train_outputs(args, out)
    config, classes = _config(args)
    if args.ssl4mis:
        # --lazy / --no-lazy; neither: lazy when the slices would not fit data_budget_mb (docs/cluster.md)
        data, val = datasets.ssl4mis(args.ssl4mis, labeled=args.labeled, limit=args.limit, lazy=args.lazy,
                                     budget_mb=config.data_budget_mb)
    elif args.folder:
        data, _ = datasets.image_folder(args.folder, labeled=args.labeled)
        val = None
    else:  # a cohort (volumes matched to label files by name), or one volume: a cohort of one, built alike
        from .core.data.cohort import list_cohort
        from .core.engine.rounds import training_data

        if args.images:
            members = list_cohort(args.images, args.labels)
        else:
            members = [datasets.painted_volume(args.image, args.labels)]
        data, val = training_data(members, axis=args.axis or 0, labels_complete=args.labels_complete), None
        if main and args.images:  # after the data: a refusal stays the one line on stderr
            print(f"{len(members)} volumes, {sum(m.labels is not None for m in members)} with a label file"
                  + (" (complete: every slice labeled)" if args.labels_complete else ""), file=sys.stderr)
    # the user's num_classes / class_names are honoured or refused against what the labels hold, never replaced
    data, found = datasets.with_classes(data, config.num_classes if classes else None,
                                        config.class_names if "class_names" in classes else None)
    if val is not None and val.num_classes == data.num_classes:
        val.class_names = list(data.class_names)
    if args.val_slices:  # --image / --images (checked above): held out of training, scored per volume
        from .core.data.holdout import split_validation

        data, val = split_validation(data, args.val_slices)
        if val is None:
            raise SamatchError(f"--val-slices {args.val_slices} needs at least two labeled slices (one to train "
                               "on); paint more slices or leave --val-slices out.")
    config = config.replace(num_classes=data.num_classes, class_names=list(data.class_names))
    if args.resume:  # flags given here (--device cpu, a smaller --batch-labeled) override the checkpoint's
        engine = Engine.from_checkpoint(args.resume, data, val=val, **_overrides(args))
    else:
        engine = Engine(data, config, val=val)
    n = distributed.world_size()
    ranks = f"; {n} processes, global batch {n} x ({engine.config.batch_labeled} + " \
            f"{engine.config.batch_unlabeled})" if n > 1 else ""
    if main:
        print(f"{len(data.labeled_indices())} labeled and {len(data.unlabeled_indices())} unlabeled slices; "
              f"method {engine.config.method}; device {engine.device}{ranks}", file=sys.stderr)
        if not args.quiet:
            print(found, file=sys.stderr)
    t0 = time.perf_counter()
    summary = engine.run(progress_printer(args.quiet), checkpoint_dir=out)
    summary["wall_s"] = time.perf_counter() - t0
    if not main:
        return 0
    export_model(engine, out / "model.pt")
    _write_json(out / "metrics.json",
                {"summary": summary, "history": engine.history, "config": engine.config.to_dict()})
    print(f"Model written to {out / 'model.pt'}; metrics to {out / 'metrics.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .core.data.io import read_volume
    from .core.data.outputs import check_new_files, check_not_an_input
    from .core.data.writers import write_mask
    from .core.engine.export import load_model, run_file
    from .core.match.inference import predict_volume

    if bool(args.image) == bool(args.images):
        raise SamatchError("Give one of --image FILE (one volume) or --images DIR (every volume in the folder).")
    model = run_file(args.model, "model.pt", "to predict with")
    if args.images:
        return _predict_cohort(args, model)
    check_not_an_input([args.out], {"--model": model, "--image": args.image}, "choose another --out")
    check_new_files([args.out], args.overwrite)
    unet, config = load_model(model)
    vol = read_volume(args.image)
    vol.validate()
    pred = predict_volume(unet, vol.image, config.size, axis=args.axis)
    written = write_mask(args.out, pred, like=vol, overwrite=args.overwrite)
    print(f"Mask written to {args.out}" + (f" ({len(written)} files)" if len(written) > 1 else ""))
    return 0


def _predict_cohort(args: argparse.Namespace, model: Path) -> int:
    """One mask per volume of --images into the folder --out, named like its volume (so that the masks can be
    given back as --labels), NIfTI with the source's geometry (TIFF for TIFF sources). Every target is checked
    before the first is written."""
    from .core.data.cohort import list_cohort
    from .core.engine.export import load_model
    from .core.match.cohort_masks import check_mask_folder, predict_to_folder

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SamatchError(f"--out '{out}' is a file; with --images it must be a folder (one mask per volume).")
    members = list_cohort(args.images)
    targets = check_mask_folder(members, out, args.overwrite, {"--model": model, "--images": args.images})
    unet, config = load_model(model)
    predict_to_folder(unet, config.size, members, targets, args.overwrite, axis=args.axis,
                      on_volume=lambda k, m, target: print(f"[{k + 1}/{len(members)}] {m.name} -> {target.name}",
                                                           file=sys.stderr))
    print(f"{len(members)} masks written to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .core.checkpoint import json_safe
    from .core.data.io import read_ssl4mis_volumes
    from .core.data.outputs import check_new_files, check_not_an_input
    from .core.engine.export import load_model, run_file
    from .core.evaluation.evaluate import evaluate_volumes

    model = run_file(args.model, "model.pt", "to evaluate")
    if args.out:
        split = Path(args.split) if Path(args.split).is_absolute() else Path(args.data) / args.split
        check_not_an_input([args.out], {"--model": model, "--data": args.data, "--split": split},
                           "choose another --out")
    unet, config = load_model(model)
    vols = read_ssl4mis_volumes(args.data, args.split)
    if args.out:
        check_not_an_input([args.out], {f"volume {v.name}": v.source for v in vols}, "choose another --out")
        check_new_files([args.out], args.overwrite)
    result = evaluate_volumes(unet, vols, config.size, config.class_names)
    result["model"], result["split"] = str(model), args.split
    print(json.dumps(json_safe({"per_class": result["per_class"], "mean": result["mean"]}), indent=2))
    if args.out:
        _write_json(Path(args.out), result)
    return 0


DEMO_FILES = ("model.pt", "demo.json", "phantom_mask.nii.gz", "phantom_mask.tif", "checkpoints")


def cmd_demo(args: argparse.Namespace) -> int:
    from .core.checkpoint import check_writable_folder
    from .core.data.outputs import check_run_folder
    from .demo import run_demo

    check_writable_folder(args.out, "Choose another folder for --out.")
    check_run_folder(args.out, args.overwrite, files=DEMO_FILES)
    run_demo(Path(args.out), device=args.device or "auto", quiet=args.quiet, fast=args.fast)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-samatch", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def schedule_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="JSON or TOML file with settings (see docs/cli.md)")
        sp.add_argument("--preset", default="quick", help="quick | standard | paper (default quick)")
        sp.add_argument("--method", choices=["supervised", "unimatch", "samatch"])
        sp.add_argument("--warmup-iters", dest="warmup_iters", type=int)
        sp.add_argument("--sam-iters", dest="sam_iters", type=int)
        sp.add_argument("--joint-iters", dest="joint_iters", type=int)
        sp.add_argument("--size", type=int)
        sp.add_argument("--batch-labeled", dest="batch_labeled", type=int)
        sp.add_argument("--batch-unlabeled", dest="batch_unlabeled", type=int)
        sp.add_argument("--sam-mode", dest="sam_mode", choices=["decoder", "full"])
        sp.add_argument("--sam-backend", dest="sam_backend", choices=["litemedsam", "sam"])
        sp.add_argument("--sam-checkpoint", dest="sam_checkpoint")
        sp.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
        sp.add_argument("--threads", type=int)
        sp.add_argument("--seed", type=int)
        sp.add_argument("--eval-every", dest="eval_every", type=int)
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other setting, repeatable")
        sp.add_argument("--quiet", action="store_true")

    t = sub.add_parser("train", help="train SAM-Match (or a baseline) and export the model")
    t.add_argument("--ssl4mis", help="SSL4MIS-layout folder (e.g. ACDC) with train_slices.list")
    t.add_argument("--labeled", type=int, default=68, help="labeled slices/images (first N of the list)")
    t.add_argument("--limit", type=int, help="use only the first N training slices (quick tries)")
    t.add_argument("--lazy", action=argparse.BooleanOptionalAction, default=None,
                   help="read --ssl4mis slices from disk when used, not all at the start (default: only when "
                        "they would not fit data_budget_mb)")
    t.add_argument("--image", help="a volume (NIfTI, TIFF, h5, a DICOM series folder) in which a few slices are "
                                   "labeled")
    t.add_argument("--images", help="a cohort: a folder of volumes (NIfTI, TIFF, h5, one DICOM series per "
                                    "sub-folder); those without a label file are unlabeled")
    t.add_argument("--labels", help="the label file for --image, or the folder of label files (named like the "
                                    "volumes) for --images; painted slices count as labeled")
    t.add_argument("--labels-complete", dest="labels_complete", action="store_true",
                   help="with --images: the label files are complete ground truth, so every slice of a volume with "
                        "a label file is labeled, background-only slices included (default: painted slices only)")
    t.add_argument("--axis", type=int, help="slice axis of --image (default 0)")
    t.add_argument("--val-slices", dest="val_slices", type=int,
                   help="with --image or --images: hold N labeled slices out for validation (evenly spread; "
                        "over the cohort's volumes with --images) and keep the best model by their Dice")
    t.add_argument("--folder", help="a folder of 2D images with *_mask*.png masks (BUSI layout)")
    t.add_argument("--resume", help="a last.pt checkpoint to continue from")
    t.add_argument("--out", default="samatch-run", help="output folder (checkpoints, model.pt, metrics.json)")
    t.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --out")
    schedule_flags(t)
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="segment a volume with a trained model")
    pr.add_argument("--model", required=True)
    pr.add_argument("--image", help="one volume (a file, or a DICOM series folder)")
    pr.add_argument("--images", help="a folder of volumes: one mask each, into the folder --out")
    pr.add_argument("--axis", type=int, default=0, help="slice axis (default 0)")
    pr.add_argument("--out", required=True, help="mask file: .nii.gz, .tif, or a folder for PNGs; with --images, "
                                                 "the folder for the masks (<volume name>.nii.gz)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing mask file")
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="score a trained model on an SSL4MIS-layout folder")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True, help="SSL4MIS-layout folder, e.g. .../ACDC")
    e.add_argument("--split", default="val.list", help="list file of volumes (val.list, test.list, ...)")
    e.add_argument("--out", help="write the full metrics JSON here")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="SAM-Match on the bundled synthetic volume, on the CPU in minutes")
    d.add_argument("--out", default="samatch-demo")
    d.add_argument("--overwrite", action="store_true", help="replace an earlier demo's results in --out")
    d.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    d.add_argument("--fast", action="store_true", help="a much shorter schedule (for tests)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            warnings.simplefilter("always", DataWarning)
            return args.func(args)
    except SamatchError as exc:
        print(f"napari-samatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-samatch: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
