"""Does the warm-up decide a Start? The Match model at the end of the warm-up and at the end, beside the answer.

    python benchmarks/warmup_probe.py --volumes 0,1,2,3,4 --k 5 --seeds 0 1 2
    python benchmarks/warmup_probe.py --no-acdc --phantom --k 3 --seeds 0 1

Start trains once per volume, k and seed (the `quick` preset, as `volume_completion.py --methods start`). When
the warm-up ends (its refits included) the Match model is scored on the unpainted slices against the hidden
labels, and beside that two signals a run could use without them: its Dice on the painted slices (``fit``) and
its agreement with the painted slices' interpolation on the unpainted ones, weighted by the interpolation's
confidence (``prior``). At the end the same three and the answer (what the Review dock shows and Export writes).
With several seeds the summary says how much of a volume's spread the warm-up explains: the correlation, within
each volume, of each warm-up number with the answer, and what keeping the best seed by each would buy.
One JSON line per run; JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import volume_completion as vc  # noqa: E402

SIGNALS = ("match", "fit", "prior")


def dice(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Mean Dice over the structures (1-3) present in either label map, optionally pixel-weighted."""
    w = np.ones(a.shape, np.float32) if weight is None else weight
    out = []
    for c in (1, 2, 3):
        p, g = a == c, b == c
        total = (w * p).sum() + (w * g).sum()
        if total > 0:
            out.append(float(2 * (w * (p & g)).sum() / total))
    return float(np.mean(out)) if out else float("nan")


def signals(engine, labels: np.ndarray, picks: list[int], rest: list[int]) -> dict:
    """The Match model's Dice on the unpainted slices (hidden labels), on the painted ones, and its
    confidence-weighted agreement with the interpolation on the unpainted ones."""
    import torch.nn.functional as F

    probs = engine.predict(list(range(len(labels))))
    frame = probs.argmax(1).cpu().numpy()
    native = F.interpolate(probs.float(), size=labels.shape[1:], mode="bilinear", align_corners=False).argmax(1).numpy()
    prior, conf = (t.cpu().numpy() for t in engine.prior[:2])
    return {"match": dice(native[rest], labels[rest]),
            "fit": dice(frame[picks], engine.labels.cpu().numpy()[picks]),
            "prior": dice(frame[rest], prior[rest], conf[rest])}


def probe(image, labels, painted, picks, rest, seed: int, args) -> dict:
    engine = vc.engine_for(image, painted, picks, threads=args.threads, seed=seed, **vc.parse_set(args.set))
    step, seen = engine.step, {}

    def watched(stage: str) -> dict:
        if stage == "joint" and "warmup" not in seen:
            seen["warmup"] = signals(engine, labels, picks, rest)
        return step(stage)
    engine.step = watched
    t0 = time.perf_counter()
    engine.run()
    train_s = time.perf_counter() - t0
    answer = engine.preview(list(range(len(labels))), native=True)
    return {"train_s": round(train_s, 1), "warmup": seen.get("warmup"), "end": signals(engine, labels, picks, rest),
            "answer": vc.mean_dice(vc.scores(answer["refined"], labels, rest))}


def summary(rows: list[dict]) -> list[str]:
    """Per k: the seeds' mean and spread, and how the warm-up's numbers follow the answer within a volume."""
    from scipy.stats import pearsonr

    lines = []
    for k in sorted({r["k"] for r in rows}):
        by_volume: dict[str, list[dict]] = {}
        for r in rows:
            if r["k"] == k and r["warmup"]:
                by_volume.setdefault(r["volume"], []).append(r)
        groups = [g for g in by_volume.values() if len(g) > 1]
        if not groups:
            continue
        answers = [np.array([r["answer"] for r in g]) for g in groups]
        lines.append(f"k = {k}, {len(groups)} volumes x {len(groups[0])} seeds: answer {np.mean(np.concatenate(answers)):.4f}, "
                     f"mean range {np.mean([np.ptp(a) for a in answers]):.4f}, best seed per volume (hidden labels) "
                     f"{np.mean([a.max() - a.mean() for a in answers]):+.4f}")
        for when in ("warmup", "end"):
            for s in SIGNALS:
                xs = [np.array([r[when][s] for r in g]) for g in groups]
                xc, ac = (np.concatenate([v - v.mean() for v in vs]) for vs in (xs, answers))
                rho = pearsonr(xc, ac)[0] if len(xc) > 2 and xc.std() > 0 and ac.std() > 0 else float("nan")
                gain = np.mean([a[x.argmax()] - a.mean() for a, x in zip(answers, xs)])
                lines.append(f"  {when:6s} {s:5s}: within-volume r with the answer {rho:+.2f}; keeping the seed it "
                             f"ranks first {gain:+.4f}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    vc.add_case_arguments(ap)
    ap.add_argument("--seeds", type=int, nargs="+", help="several seeds per volume (default: --seed)")
    ap.add_argument("--out", default=str(vc.RESULTS / "warmup_probe.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name, image, labels, k, picks, rest, painted in vc.painted_cases(args):
        for seed in args.seeds or [args.seed]:
            row = {"volume": name, "k": k, "seed": seed, **probe(image, labels, painted, picks, rest, seed, args)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
