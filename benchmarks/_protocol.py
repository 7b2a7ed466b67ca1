"""What the ACDC and BUSI protocol benchmarks share: profiles, methods, one run per method, reports.

Not a benchmark itself; ``benchmarks/acdc.py`` and ``benchmarks/busi.py`` import it (a script's own
folder is on ``sys.path``, so ``import _protocol`` works from any working directory).

Equal budgets: every method gets the same Match-model schedule (``warmup_iters`` + ``joint_iters``
steps at ``batch_labeled`` + ``batch_unlabeled``, the same learning rate, seed and frame size). The
SAM-Match methods also run ``sam_iters`` steps that train SAM alone on the labeled slices (the paper's
LiteMedSAM pre-training); they do not touch the Match model. The warm-up stage runs ``--warmup-method``
for every method except ``supervised``, which is supervised throughout; with the same seed the
non-supervised methods therefore start the joint stage from the same Match model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from napari_samatch.core.config import RunConfig, preset
from napari_samatch.core.data.slices import SliceSet
from napari_samatch.core.data.volume import Volume
from napari_samatch.core.device import select_device
from napari_samatch.core.engine import events as ev
from napari_samatch.core.engine.engine import Engine
from napari_samatch.core.engine.export import export_model
from napari_samatch.core.engine.validation import Validator
from napari_samatch.core.errors import SamatchError
from napari_samatch.core.evaluation.evaluate import evaluate_volumes

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"

# Config overrides per method; the warm-up method of the non-supervised ones is a flag (see above).
METHODS: dict[str, dict[str, Any]] = {
    "supervised": {"method": "supervised", "warmup_method": "supervised"},
    "unimatch": {"method": "unimatch"},
    "samatch-decoder": {"method": "samatch", "sam_mode": "decoder"},
    "samatch-full": {"method": "samatch", "sam_mode": "full"},
}

# Schedule values of each profile; every key is also a command-line flag that overrides it.
# gpu-paper: the "paper" preset of core/config.py (30 000 joint steps, batch 4 + 4, 256 px).
# cpu-quick: partly measured on the 2-core machine (docs/benchmarks.md, Results):
#   128 px (4x fewer UNet FLOPs than 256), a supervised warm-up (one UNet pass a step: the most
#   learning per CPU second, as the demo found), SAM trained on every 4th joint step, 32 unlabeled slices
#   (each is encoded once by SAM at 256 px, 4-6 s a slice on that CPU).
PROFILES: dict[str, dict[str, Any]] = {
    "gpu-paper": {"size": 256, "warmup_iters": 0, "sam_iters": 1000, "joint_iters": 30000,
                  "batch_labeled": 4, "batch_unlabeled": 4, "optimizer": "sgd", "lr": 0.01, "sam_lr": 1e-4,
                  "sam_every": 1, "eval_every": 1000, "warmup_method": "unimatch", "device": "auto", "threads": 0,
                  "limit_unlabeled": None, "pseudo_sample": 16, "methods": list(METHODS)},
    # samatch-full is left out of cpu-quick's default list: in "full" mode LiteMedSAM's encoder runs forward
    # and backward on every slice of every SAM step (measured: 71 s for one SAM step at batch 1, 124 s for
    # one joint step at batch 1 + 1, 1 thread), hours at this budget. Ask for it with --methods.
    # lr 0.05: at this budget 0.01 learned nothing on ACDC (mean Dice 0.005), 0.05 reached 0.35 (2026-11-25).
    "cpu-quick": {"size": 128, "warmup_iters": 150, "sam_iters": 30, "joint_iters": 100,
                  "batch_labeled": 4, "batch_unlabeled": 4, "optimizer": "sgd", "lr": 0.05, "sam_lr": 1e-4,
                  "sam_every": 4, "eval_every": 50, "warmup_method": "supervised", "device": "cpu", "threads": 2,
                  "limit_unlabeled": 32, "pseudo_sample": 16,
                  "methods": ["supervised", "unimatch", "samatch-decoder"]},
}
_TYPES = {"size": int, "warmup_iters": int, "sam_iters": int, "joint_iters": int, "batch_labeled": int,
          "batch_unlabeled": int, "optimizer": str, "lr": float, "sam_lr": float, "sam_every": int,
          "eval_every": int, "warmup_method": str, "device": str, "threads": int, "limit_unlabeled": int,
          "pseudo_sample": int}


def add_protocol_flags(ap: argparse.ArgumentParser) -> None:
    """Flags common to both benchmarks; schedule flags default to None = the profile's value."""
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu-quick")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), help="default: the profile's list")
    ap.add_argument("--limit-val", type=int, help="use only the first K validation and evaluation cases (smoke runs)")
    ap.add_argument("--out", type=Path, help="output folder (default benchmarks/results/<bench>-<profile>-<time>)")
    ap.add_argument("--iters", type=int, help="shorthand: warm-up, SAM and joint iterations all = N (smoke runs)")
    for key, typ in _TYPES.items():
        flag = "--" + key.replace("_", "-")
        if key == "warmup_method":
            ap.add_argument(flag, choices=["supervised", "unimatch"], help="warm-up of the non-supervised methods")
        elif key == "optimizer":
            ap.add_argument(flag, choices=["sgd", "adamw"], help="the Match model's optimiser (default sgd)")
        else:
            what = " (-1 = all)" if key == "limit_unlabeled" else ""
            ap.add_argument(flag, type=typ, dest=key, help="default: " + ", ".join(
                f"{p} {PROFILES[p][key]}" for p in sorted(PROFILES)) + what)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other RunConfig setting for every method, e.g. --set conf_thresh=0.9")


def schedule(args: argparse.Namespace) -> dict[str, Any]:
    """The profile's values with the command line's overrides applied."""
    values = dict(PROFILES[args.profile])
    if args.iters is not None:
        values.update(warmup_iters=args.iters, sam_iters=args.iters, joint_iters=args.iters)
    for key in _TYPES:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if args.methods:
        values["methods"] = list(args.methods)
    if values["limit_unlabeled"] is not None and values["limit_unlabeled"] < 0:
        values["limit_unlabeled"] = None
    return values


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``k`` is None, negative or >= n)."""
    if k is None or k < 0 or k >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()}) if k > 0 else []


def method_config(name: str, sched: dict[str, Any], args: argparse.Namespace, class_names: Sequence[str]) -> RunConfig:
    """The RunConfig of one method under the shared schedule."""
    extra: dict[str, Any] = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            extra[key] = json.loads(raw)
        except json.JSONDecodeError:
            extra[key] = raw
    keys = ("size", "warmup_iters", "sam_iters", "joint_iters", "batch_labeled", "batch_unlabeled", "optimizer",
            "lr", "sam_lr", "sam_every", "eval_every", "warmup_method", "device", "threads")
    values = {k: sched[k] for k in keys if k in RunConfig.__dataclass_fields__}  # "optimizer" is newer
    values.update(seed=args.seed, checkpoint_every=0, num_classes=len(class_names), class_names=list(class_names))
    values.update(extra)
    values.update(METHODS[name])
    if values["method"] != "samatch":
        values["sam_iters"] = 0  # SAM is not used: its pre-training would only cost time
    return preset("standard", **values)


def check_settings(args: argparse.Namespace, class_names: Sequence[str]) -> None:
    """Build every method's config once before any data is read: a typo fails in a second, not after loading."""
    sched = schedule(args)
    for m in sched["methods"]:
        method_config(m, sched, args, class_names)


def cli(main: Callable[[], int]) -> int:
    """Run a benchmark's main; a user error (bad path, setting) prints one line and exits 2."""
    try:
        return main()
    except SamatchError as exc:
        print(f"{Path(sys.argv[0]).name}: {exc}", file=sys.stderr)
        return 2


def output_dir(bench: str, args: argparse.Namespace) -> Path:
    """``--out``, or benchmarks/results/<bench>-<profile>-<timestamp>/; created."""
    out = args.out or RESULTS / f"{bench}-{args.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def git_commit() -> str:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """CPU model, core count, torch version, device and threads: what the wall times depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    device = torch.device(device)
    info = {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _printer(name: str) -> Callable[[ev.Event], None]:
    """Event callback: stage starts, about ten progress lines per stage, every validation."""
    def on_event(e: ev.Event) -> None:
        if e.kind == ev.STAGE:
            print(f"  [{name}] {e.message}", flush=True)
        elif e.kind == ev.PROGRESS and e.stage_total and e.iteration % max(1, e.stage_total // 10) == 0:
            loss = e.data.get("losses", {}).get("loss", math.nan)
            print(f"  [{name}] {e.stage} {e.iteration}/{e.stage_total} loss {loss:.4f} "
                  f"step {e.data.get('step_s', 0):.2f} s", flush=True)
        elif e.kind == ev.METRICS:
            print(f"  [{name}] {e.stage} {e.iteration}: {ev.format_metrics(e.data)}", flush=True)
    return on_event


def run_method(name: str, config: RunConfig, data: SliceSet, val: SliceSet, eval_vols: Sequence[Volume],
               out: Path, pseudo_sample: int) -> dict[str, Any]:
    """Train one method, select its Match model on ``val``, score it on ``eval_vols``, export it."""
    t0 = time.perf_counter()
    engine = Engine(data, config)
    # our own Validator, for the pseudo-label sample size (the engine's default is 32 slices)
    engine.validator = Validator(engine, val, pseudo_sample=pseudo_sample)
    summary = engine.run(_printer(name))
    t_train = time.perf_counter()
    engine.use_best()  # model selection on validation only
    model_path = export_model(engine, out / f"{name}.pt")
    scores = evaluate_volumes(engine.unet, eval_vols, config.size, config.class_names, device=engine.device)
    t_end = time.perf_counter()
    pseudo = [{"stage": h["stage"], "iteration": h["iteration"], "global_iteration": h["global_iteration"],
               "raw": h["pseudo_raw_dice"], "refined": h.get("pseudo_refined_dice"),
               "raw_by_class": h.get("pseudo_raw_by_class"), "refined_by_class": h.get("pseudo_refined_by_class")}
              for h in engine.history if "pseudo_raw_dice" in h]
    return {
        "method": name, "config": config.to_dict(), "device": str(engine.device),
        "budget": {"match_iters": config.warmup_iters + config.joint_iters, "sam_only_iters": config.sam_iters,
                   "batch": [config.batch_labeled, config.batch_unlabeled]},
        "selected": dict(engine.best), "model": str(model_path),
        "wall_s": round(t_end - t0, 1), "train_s": round(t_train - t0, 1),
        "step_s_total": round(summary["train_time_s"], 1),
        "eval_s": round(t_end - t_train, 1),
        "scores": scores, "history": engine.history, "pseudo_labels": pseudo,
        "pseudo_sample": len(engine.validator.pseudo_idx),
    }


_LABEL = {"dice": "Dice", "hd95": "HD95", "asd": "ASD"}


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(report: dict[str, Any], class_names: Sequence[str], metrics: Sequence[str]) -> str:
    """results.md: scores (method x class x metric), pseudo-label quality, budgets and wall times."""
    m = report["machine"]
    lines = [f"# {report['title']}", "",
             f"commit {report['commit']}, {report['date']}; {m['cpu']} ({m['cpus']} CPUs), torch {m['torch']}, "
             f"device {m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}, {m['threads']} threads. "
             f"Profile `{report['profile']}`; total wall time {report['total_wall_s'] / 60:.1f} min.", "",
             report["data_note"], "", f"## Scores on {report['split']} (distances in {report['units']})", ""]
    fg = list(class_names[1:])
    heads = [f"{c} {_LABEL[k]}" for c in fg for k in metrics] + [f"mean {_LABEL[k]}" for k in metrics]
    lines += ["| method | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for r in report["runs"]:
        s = r["scores"]
        cells = [_fmt(s["per_class"][c][k], 3 if k == "dice" else 2) for c in fg for k in metrics]
        cells += [_fmt(s["mean"][k], 3 if k == "dice" else 2) for k in metrics]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    lines += ["", "Best-on-validation Match model, scored per case then averaged; the mean is over classes. "
              "Distances average over the cases where both masks are non-empty."]
    missed = [f"{r['method']}: " + ", ".join(f"{c} {r['scores']['per_class'][c]['missed']}" for c in fg)
              for r in report["runs"] if any(r["scores"]["per_class"][c]["missed"] for c in fg)]
    if missed:
        lines.append("Cases where one of prediction and ground truth is empty for a class (Dice 0, no distance): "
                     + "; ".join(missed) + ".")
    pseudo = [(r["method"], p, r["pseudo_sample"]) for r in report["runs"] for p in r["pseudo_labels"]]
    if pseudo:
        lines += ["", "## Pseudo-label quality over training", "",
                  "Mean foreground Dice against the hidden labels of a fixed sample of unlabeled training "
                  "slices (training frame): the Match model's argmax, and after SAM's refinement.", "",
                  "| method | stage | iteration | slices | raw | SAM-refined |", "|---|---|---|---|---|---|"]
        for name, p, n in pseudo:
            lines.append(f"| {name} | {p['stage']} | {p['iteration']} | {n} | {_fmt(p['raw'])} "
                         f"| {_fmt(p['refined'])} |")
    lines += ["", "## Budget, model selection and wall time", "",
              "| method | Match-model iters | SAM-only iters | batch | selected (stage, global iter, val Dice) "
              "| wall | training | evaluation |", "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        b, sel = r["budget"], r["selected"]
        lines.append(f"| {r['method']} | {b['match_iters']} | {b['sam_only_iters']} | {b['batch'][0]} + "
                     f"{b['batch'][1]} | {sel.get('stage', '-')}, {sel.get('iteration', '-')}, "
                     f"{_fmt(sel.get('score'))} | {r['wall_s'] / 60:.1f} min | {r['train_s'] / 60:.1f} min "
                     f"| {r['eval_s']:.0f} s |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any], class_names: Sequence[str], metrics: Sequence[str]) -> None:
    """results.json and results.md; called after every method, so a killed run keeps what it finished."""
    report["total_wall_s"] = round(sum(r["wall_s"] for r in report["runs"]), 1)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "results.md").write_text(markdown(report, class_names, metrics))


def run_all(bench: str, args: argparse.Namespace, title: str, data: SliceSet, val: SliceSet,
            eval_vols: Sequence[Volume], split: str, data_note: str, extra: dict[str, Any],
            metrics: Sequence[str], after_method: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every requested method under one schedule, into ``args.out``; prints a summary line per method."""
    sched = schedule(args)
    out = args.out  # set (and created) by the script, which may write its split lists there first
    names = list(data.class_names)
    methods = sched["methods"]
    configs = {m: method_config(m, sched, args, names) for m in methods}  # refuse bad settings first
    if sched["threads"]:
        torch.set_num_threads(sched["threads"])
    device = select_device(configs[methods[0]].device)
    report: dict[str, Any] = {
        "benchmark": bench, "title": title, "profile": args.profile, "schedule": sched, "split": split,
        "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(device),
        "data_note": data_note, "units": "pixels" if bench == "busi" else "voxels", **extra, "runs": [],
    }
    print(f"{title}\n{data_note}\nschedule: {sched}\noutput: {out}", flush=True)
    for name in methods:
        print(f"== {name}", flush=True)
        row = run_method(name, configs[name], data, val, eval_vols, out, sched["pseudo_sample"])
        report["runs"].append(row)
        mean = row["scores"]["mean"]
        print(f"== {name}: mean Dice {mean['dice']:.4f}, HD95 {mean['hd95']:.2f}, ASD {mean['asd']:.2f} on {split} "
              f"({row['scores']['volumes']} cases); selected {row['selected']}; wall {row['wall_s']:.0f} s", flush=True)
        if after_method:
            after_method(row)
        write_report(out, report, names, metrics)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return report
