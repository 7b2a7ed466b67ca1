"""``napari-samatch``: train, predict, evaluate and demo on the same core as the plugin.

Errors the user can fix (bad files, settings, checkpoints) print one sentence and exit with status 2;
a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .console import progress_printer
from .core.errors import SamatchError


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


def _config(args: argparse.Namespace):
    from .core.config import load_config, preset

    overrides = _overrides(args)
    if getattr(args, "config", None):
        return load_config(args.config, preset=args.preset, **overrides)
    return preset(args.preset, **overrides)


def _write_json(path: Path, obj: Any) -> None:
    from .core.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(obj, indent=2, default=float).encode())


def cmd_train(args: argparse.Namespace) -> int:
    """Alone, or as one rank under ``torchrun --nproc_per_node N`` (docs/cluster.md): every rank reads the
    data and trains its share; rank 0 alone prints, checkpoints and exports."""
    from .core.engine import distributed

    distributed.init_from_env()
    try:
        return _train(args, distributed.is_main())
    finally:
        distributed.cleanup()


def _train(args: argparse.Namespace, main: bool) -> int:
    from .core.checkpoint import check_writable_folder
    from .core.data import datasets
    from .core.engine import distributed
    from .core.engine.engine import Engine
    from .core.engine.export import export_model

    out = Path(args.out)
    if main:  # before the data and the models load: a bad --out must not cost a run
        check_writable_folder(out, "Choose another folder for --out.")
    if args.ssl4mis:
        # --lazy / --no-lazy; neither: lazy when the slices would not fit data_budget_mb (docs/cluster.md)
        data, val = datasets.ssl4mis(args.ssl4mis, labeled=args.labeled, limit=args.limit, lazy=args.lazy,
                                     budget_mb=_config(args).data_budget_mb)
    elif args.folder:
        data, _ = datasets.image_folder(args.folder, labeled=args.labeled)
        val = None
    elif args.image:
        data, _ = datasets.volume_with_labels(args.image, args.labels, axis=args.axis)
        val = None
    else:
        raise SamatchError("Say what to train on: --ssl4mis DIR, --image FILE --labels FILE, or --folder DIR.")
    config = _config(args).replace(num_classes=data.num_classes, class_names=list(data.class_names))
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
    from .core.data.writers import write_mask
    from .core.engine.export import load_model
    from .core.match.inference import predict_volume

    unet, config = load_model(args.model)
    vol = read_volume(args.image)
    vol.validate()
    pred = predict_volume(unet, vol.image, config.size, axis=args.axis)
    write_mask(args.out, pred, like=vol)
    print(f"Mask written to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .core.data.io import read_ssl4mis_volumes
    from .core.engine.export import load_model
    from .core.evaluation.evaluate import evaluate_volumes

    unet, config = load_model(args.model)
    vols = read_ssl4mis_volumes(args.data, args.split)
    result = evaluate_volumes(unet, vols, config.size, config.class_names)
    result["model"], result["split"] = str(args.model), args.split
    print(json.dumps({"per_class": result["per_class"], "mean": result["mean"]}, indent=2, default=float))
    if args.out:
        _write_json(Path(args.out), result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

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
    t.add_argument("--image", help="a volume (NIfTI, TIFF, h5) in which a few slices are labeled")
    t.add_argument("--labels", help="the label file for --image")
    t.add_argument("--axis", type=int, default=0, help="slice axis of --image")
    t.add_argument("--folder", help="a folder of 2D images with *_mask*.png masks (BUSI layout)")
    t.add_argument("--resume", help="a last.pt checkpoint to continue from")
    t.add_argument("--out", default="samatch-run", help="output folder (checkpoints, model.pt, metrics.json)")
    schedule_flags(t)
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="segment a volume with a trained model")
    pr.add_argument("--model", required=True)
    pr.add_argument("--image", required=True)
    pr.add_argument("--axis", type=int, default=0)
    pr.add_argument("--out", required=True, help="mask file: .nii.gz, .tif, or a folder for PNGs")
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="score a trained model on an SSL4MIS-layout folder")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True, help="SSL4MIS-layout folder, e.g. .../ACDC")
    e.add_argument("--split", default="val.list", help="list file of volumes (val.list, test.list, ...)")
    e.add_argument("--out", help="write the full metrics JSON here")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="SAM-Match on the bundled synthetic volume, on the CPU in minutes")
    d.add_argument("--out", default="samatch-demo")
    d.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    d.add_argument("--fast", action="store_true", help="a much shorter schedule (for tests)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SamatchError as exc:
        print(f"napari-samatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-samatch: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
