"""Volume completion: k painted slices of one real volume, every other slice segmented, beside interpolation.

    python benchmarks/volume_completion.py                       # 20 ACDC val volumes, k = 1 2 3 5, all methods
    python benchmarks/volume_completion.py --limit 4 --k 3       # a quick look
    python benchmarks/volume_completion.py --phantom             # the bundled phantom as well
    python benchmarks/volume_completion.py --ids held-out --k 3  # ten ACDC training volumes never used for choosing

For each volume and k, the painted slices are the centres of k equal runs of the slices that hold any
structure (k = 1: the middle one); the other slices' labels are hidden and used only for scoring. Methods,
on the same painted slices:
  nearest     each slice copies the nearest painted slice
  interp      shape interpolation (signed distance per class, nested structures; core/prior/interpolation.py),
              the outermost painted slices copied outwards; the plugin's first result
  itk         ITK's morphological contour interpolation (3D Slicer's "Fill between slices"), if installed
              (`pip install itk-morphologicalcontourinterpolation`), nothing outside the painted range
  sam-interp  LiteMedSAM zero-shot, prompted with boxes from `interp` (the propagation micro-sam users know)
  supervised  the Match model trained on the painted slices alone (the `quick` preset's warm-up, no SAM)
  start       the plugin's default Start (preset `quick`): scored as its pseudo-labels (what Review shows
              and Export writes) and as the final Match model alone (`start-match`)
Each method runs in its own process (its peak RSS is its own), one thread each unless --threads says more.
Scores: Dice per class and HD95 (voxels) over the unpainted slices, stacked per volume, averaged over
volumes; for `start`, the Spearman rank correlation between the Review dock's slice confidence and the
slice's own mean Dice (pooled over all unpainted slices with a structure in the truth or the prediction).
Writes benchmarks/results/volume_completion.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ACDC = REPO.parent / "shared" / "data" / "ACDC"
METHODS = ("nearest", "interp", "itk", "sam-interp", "supervised", "start")
NAMES = ["background", "RV", "Myo", "LV"]
# Ten ACDC training volumes, two of each of ACDC's five groups (patients 1-20 dilated cardiomyopathy, 21-40
# hypertrophic, 41-60 infarction, 61-80 normal, 81-100 abnormal right ventricle), end-diastole and end-systole
# alternating: never used for choosing anything, so they check the default as the withheld volumes will.
HELD_OUT = ("patient005_frame01", "patient016_frame02", "patient025_frame01", "patient036_frame02",
            "patient046_frame01", "patient057_frame02", "patient067_frame01", "patient076_frame02",
            "patient090_frame01", "patient097_frame02")


def painted_slices(labels: np.ndarray, k: int) -> list[int]:
    """The centres of k equal runs of the slices that hold any structure."""
    held = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    if len(held) == 0:
        return []
    return sorted({int(held[int((i + 0.5) * len(held) / k)]) for i in range(k)})


def read_acdc_volume(vid: str) -> tuple[np.ndarray, np.ndarray]:
    """A val volume from ``data/<id>.h5``; a training volume stacked from its slices in slice-number order
    (the SSL4MIS layout keeps training volumes only as slices; ``_acdc_cohort`` knows which and in what order)."""
    from _acdc_cohort import read_h5, volume_slices

    whole = ACDC / "data" / f"{vid}.h5"
    if whole.is_file():
        image, labels = read_h5(whole)
    else:
        ids = volume_slices(ACDC).get(vid)
        if not ids:
            sys.exit(f"no volume {vid} in {ACDC / 'data'}")
        pairs = [read_h5(ACDC / "data" / "slices" / f"{sid}.h5") for sid in ids]
        image, labels = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    return image.astype(np.float32), labels.astype(np.uint8)


def load_volumes(args) -> list[tuple[str, np.ndarray, np.ndarray]]:
    vols = []
    if not args.no_acdc:
        if not (ACDC / "val.list").is_file():
            sys.exit(f"ACDC not found at {ACDC}: put ../shared/data beside the project, or pass --no-acdc --phantom.")
        ids = (ACDC / "val.list").read_text().split()
        if getattr(args, "ids", ""):
            ids = list(HELD_OUT) if args.ids == "held-out" else args.ids.split(",")
        if args.volumes:
            ids = [ids[int(i)] for i in args.volumes.split(",")]
        for vid in ids[: args.limit or None]:
            vols.append((vid, *read_acdc_volume(vid)))
    if args.phantom:
        from napari_samatch.core.data.sample import make_cardiac_phantom

        ph = make_cardiac_phantom()
        vols.append(("phantom", ph.image.astype(np.float32), ph.labels.astype(np.uint8)))
    return vols



def add_case_arguments(ap) -> None:
    """The volumes, k, seed and overrides of a script that trains Start once per case (answer_variants.py,
    joint_average.py); ``painted_cases`` reads them."""
    ap.add_argument("--volumes", default="0", help="comma-separated indices into val.list (or --ids)")
    ap.add_argument("--ids", default="", help="volume ids instead of val.list, or 'held-out' (HELD_OUT)")
    ap.add_argument("--k", type=int, nargs="+", default=[5])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--phantom", action="store_true")
    ap.add_argument("--no-acdc", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the quick preset")
    ap.set_defaults(limit=0)


def painted_cases(args):
    """Each volume and k of ``args``: name, image, labels, k, the painted slices, the other (scored) slices, and
    the labels with only the painted slices kept."""
    for name, image, labels in load_volumes(args):
        for k in args.k:
            picks = painted_slices(labels, k)
            painted = np.zeros_like(labels)
            painted[picks] = labels[picks]
            yield name, image, labels, k, picks, [z for z in range(len(labels)) if z not in picks], painted

# ------------------------------------------------------------------------------------------ methods
def itk_interpolation(painted: np.ndarray) -> np.ndarray:
    import itk

    image = itk.image_from_array(painted.astype(np.uint8))
    return itk.array_from_image(itk.morphological_contour_interpolator(image)).astype(np.uint8)


def engine_for(image, painted, picks, **overrides):
    from napari_samatch.core.config import preset
    from napari_samatch.core.data.slices import SliceSet
    from napari_samatch.core.data.volume import Volume
    from napari_samatch.core.engine.engine import Engine

    vol = Volume(image, painted, name="v", metadata={"class_names": NAMES})
    data = SliceSet.from_volume(vol, labeled=picks, num_classes=4, class_names=NAMES)
    config = preset("quick", device="cpu", eval_every=0, checkpoint_every=0, **overrides)
    return Engine(data, config)


def run_method(method: str, image, labels, picks, threads: int, seed: int, start_set: dict | None = None) -> dict:
    """One method on one volume: predicted labels (Z,H,W) and extras."""
    import torch

    from napari_samatch.core.prior.interpolation import interpolate_labels, nearest_labels

    painted = np.zeros_like(labels)
    painted[picks] = labels[picks]
    hw = labels.shape[1:]
    if method == "nearest":
        return {"pred": nearest_labels(painted, picks)}
    if method == "interp":
        return {"pred": interpolate_labels(painted, picks, 4).labels}
    if method == "itk":
        return {"pred": itk_interpolation(painted)}
    if method == "sam-interp":
        engine = engine_for(image, painted, picks, threads=threads, seed=seed, warmup_iters=0, joint_iters=0,
                            sam_iters=0)
        every = list(range(len(labels)))
        onehot = lambda t: torch.nn.functional.one_hot(t, 4).permute(0, 3, 1, 2).float()  # noqa: E731
        with torch.no_grad():  # boxes from the interpolation in the frame; masks fused at the slices' size
            engine.sam.eval()
            engine.calibrate_sam()
            refined = engine.refiner.refine(onehot(engine.prior[0]), every, engine.images,
                                            answer_probs=onehot(engine.native_prior.of(every)[0]))
        return {"pred": refined.labels.cpu().numpy().astype(np.uint8)}
    if method == "supervised":
        engine = engine_for(image, painted, picks, threads=threads, seed=seed, method="supervised",
                            warmup_method="supervised", sam_iters=0, joint_iters=0, prior_weight=0.0)
        engine.run()
        probs = torch.nn.functional.interpolate(engine.predict(), size=hw, mode="bilinear", align_corners=False)
        return {"pred": probs.argmax(1).cpu().numpy().astype(np.uint8)}  # like `napari-samatch predict`
    if method == "start":
        engine = engine_for(image, painted, picks, threads=threads, seed=seed, **(start_set or {}))
        engine.run()
        out = engine.preview(list(range(len(labels))), native=True)  # what the Review dock shows and exports
        return {"pred": out["refined"], "match": out["raw"], "prior": engine.native_prior.of(range(len(labels)))[0].numpy(),
                "slice_confidence": out["slice_confidence"]}
    raise SystemExit(f"unknown method {method}")


def scores(pred: np.ndarray, labels: np.ndarray, rest: list[int]) -> dict:
    from napari_samatch.core.evaluation.metrics import per_class_metrics

    m = per_class_metrics(pred[rest], labels[rest], 4)
    return {NAMES[c]: {"dice": v["dice"], "hd95": v["hd95"]} for c, v in m.items()}


def slice_dice(pred: np.ndarray, labels: np.ndarray) -> float:
    ds = []
    for c in (1, 2, 3):
        p, g = pred == c, labels == c
        if p.any() or g.any():
            ds.append(2 * (p & g).sum() / (p.sum() + g.sum()))
    return float(np.mean(ds)) if ds else float("nan")


def worker(args) -> None:
    """Run one method over every volume and k; print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name, image, labels in load_volumes(args):
        for k in args.k:
            picks = painted_slices(labels, k)
            rest = [z for z in range(len(labels)) if z not in picks]
            t0 = time.perf_counter()
            out = run_method(args.worker, image, labels, picks, args.threads, args.seed, parse_set(args.set))
            row = {"volume": name, "k": k, "painted": picks, "time_s": time.perf_counter() - t0,
                   "scores": scores(out["pred"], labels, rest)}
            if "match" in out:
                row["match_scores"] = scores(out["match"], labels, rest)
                row["slices"] = [(float(out["slice_confidence"][z]), slice_dice(out["pred"][z], labels[z]))
                                 for z in rest]
                # other candidate scores, to choose the Review dock's rule on val (agreement of the answer
                # with the Match model alone and with the interpolation alone)
                row["slice_candidates"] = [{"agree_match": slice_dice(out["match"][z], out["pred"][z]),
                                            "agree_prior": slice_dice(out["prior"][z], out["pred"][z]),
                                            "confidence": float(out["slice_confidence"][z]),
                                            "dice": slice_dice(out["pred"][z], labels[z])} for z in rest]
            rows.append(row)
            print(f"  {args.worker} {name} k={k}: mean Dice {mean_dice(row['scores']):.3f} "
                  f"({row['time_s']:.0f} s)", file=sys.stderr, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": args.worker, "rows": rows, "peak_rss_mb": peak}))


def parse_set(pairs: list[str]) -> dict:
    """``KEY=VALUE`` overrides of the quick preset for `start` (JSON values: numbers, true/false)."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def mean_dice(s: dict) -> float:
    return float(np.mean([v["dice"] for v in s.values()]))


def spearman(pairs) -> float:
    from scipy.stats import spearmanr

    pairs = [(c, d) for c, d in pairs if not np.isnan(d)]
    return float(spearmanr([c for c, _ in pairs], [d for _, d in pairs]).statistic) if len(pairs) > 2 else float("nan")


def summary(results: dict, ks) -> tuple[dict, str]:
    table, lines = {}, ["| method | k | RV | Myo | LV | mean Dice | HD95 | time/volume (s) | peak RSS (MB) |",
                        "|---|---|---|---|---|---|---|---|---|"]
    for method, res in results.items():
        variants = [(method, "scores")] + ([("start-match", "match_scores")] if method == "start" else [])
        for label, key in variants:
            for k in ks:
                rows = [r for r in res["rows"] if r["k"] == k]
                if not rows:
                    continue
                per = {c: float(np.mean([r[key][c]["dice"] for r in rows])) for c in NAMES[1:]}
                hd = [r[key][c]["hd95"] for r in rows for c in NAMES[1:]]
                hd = float(np.nanmean(np.array(hd, dtype=float))) if hd else float("nan")
                mean = float(np.mean(list(per.values())))
                t = float(np.median([r["time_s"] for r in rows]))
                entry = {"dice": per, "mean_dice": mean, "hd95": hd, "median_time_s": t,
                         "time_spread_s": [float(min(r["time_s"] for r in rows)), float(max(r["time_s"] for r in rows))],
                         "peak_rss_mb": res["peak_rss_mb"], "volumes": len(rows)}
                if method == "start" and key == "scores":
                    pooled = [p for r in rows for p in r["slices"]]
                    entry["confidence_dice_spearman"] = spearman(pooled)
                table.setdefault(label, {})[k] = entry
                lines.append(f"| {label} | {k} | " + " | ".join(f"{per[c]:.3f}" for c in NAMES[1:])
                             + f" | **{mean:.3f}** | {hd:.2f} | {t:.1f} | {res['peak_rss_mb']:.0f} |")
    lines += ["", *per_volume(results, ks)]
    for k in ks:
        if "start" in table and k in table["start"]:
            lines.append(f"\nk = {k}: confidence/Dice Spearman over the unpainted slices "
                         f"{table['start'][k]['confidence_dice_spearman']:.2f}")
    return table, "\n".join(lines)


def per_volume(results: dict, ks) -> list[str]:
    """Mean Dice of every method on every volume (rows) and k: the table behind the averages."""
    cols = [(m, "scores") for m in results] + ([("start-match", "match_scores")] if "start" in results else [])
    lines = ["| volume | k | " + " | ".join(m for m, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    vols = list(dict.fromkeys(r["volume"] for res in results.values() for r in res["rows"]))
    for v in vols:
        for k in ks:
            cells = []
            for m, key in cols:
                res = results["start" if m == "start-match" else m]
                row = next((r for r in res["rows"] if r["volume"] == v and r["k"] == k), None)
                cells.append(f"{mean_dice(row[key]):.3f}" if row else "")
            if any(cells):
                lines.append(f"| {v} | {k} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--limit", type=int, default=0, help="first N val volumes (0 = all 20)")
    ap.add_argument("--volumes", default="", help="comma-separated indices into val.list (or into --ids)")
    ap.add_argument("--ids", default="", help="comma-separated ACDC volume ids instead of val.list (training "
                    "volumes are stacked from their slices), or 'held-out': the ten training volumes of HELD_OUT")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--phantom", action="store_true", help="add the bundled phantom")
    ap.add_argument("--no-acdc", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=2, help="methods run at once (one process each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "volume_completion"))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides of the quick preset for `start` (e.g. sam_every=0)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        sys.stdout.flush()
        os._exit(0)  # ITK's teardown corrupted the heap at exit (abort after the results were printed)
    methods = list(args.methods)
    if "itk" in methods:
        try:
            import itk  # noqa: F401
        except ImportError:
            print("itk-morphologicalcontourinterpolation is not installed: leaving out 'itk'", file=sys.stderr)
            methods.remove("itk")
    base = [sys.executable, __file__, "--k", *map(str, args.k), "--limit", str(args.limit), "--threads",
            str(args.threads), "--seed", str(args.seed), "--set", *args.set] + (["--volumes", args.volumes] if args.volumes else []) \
        + (["--ids", args.ids] if args.ids else []) \
        + (["--phantom"] if args.phantom else []) + (["--no-acdc"] if args.no_acdc else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results, running, todo = {}, [], list(methods)
    t0 = time.perf_counter()
    while todo or running:
        while todo and len(running) < args.parallel:
            m = todo.pop(0)
            log = tempfile.TemporaryFile(mode="w+")  # a pipe would fill up while another worker is awaited
            running.append((m, subprocess.Popen(base + ["--worker", m], stdout=log, text=True, env=env), log))
        time.sleep(0.5)
        for entry in [e for e in running if e[1].poll() is not None]:
            running.remove(entry)
            m, proc, log = entry
            log.seek(0)
            out = log.read()
            if proc.returncode != 0:
                print(f"{m} failed (exit {proc.returncode})", file=sys.stderr)
                continue
            results[m] = json.loads(out.strip().splitlines()[-1])
    table, md = summary(results, args.k)
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"args": {k: v for k, v in vars(args).items() if k != "worker"}, "table": table, "results": results,
              "wall_s": time.perf_counter() - t0}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=float))
    out.with_suffix(".md").write_text(md + "\n")
    print(f"wrote {out.with_suffix('.json')} and .md ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
