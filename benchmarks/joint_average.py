"""The joint stage's weight average (``joint_average``) against the last weights, on the same training run.

    python benchmarks/joint_average.py --volumes 0,1,2,3,4 --k 5 2 --seed 1
    python benchmarks/joint_average.py --no-acdc --phantom --k 3

Start trains once per volume and k (the `quick` preset, as `volume_completion.py --methods start`) with
``joint_average`` off, while a :class:`WeightAverage` follows the joint steps beside it; then the answer (what the
Review dock shows and Export writes) is made twice on that one run: from the last weights (the paper's and the
preset's) and from the mean (`--set joint_average=true`, for two or more painted slices). Training noise
is out of the comparison. One JSON line per volume and k; the means at the end; JSON to --out.
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


def trained_with_average(image, painted, picks, args):
    """Start with the last weights, and the mean of the joint stage's weights followed beside it."""
    from napari_samatch.core.match.averaging import WeightAverage

    engine = vc.engine_for(image, painted, picks, threads=args.threads, seed=args.seed,
                           **{**vc.parse_set(args.set), "joint_average": False})
    average, step = WeightAverage(), engine.step

    def followed(stage: str) -> dict:
        logs = step(stage)
        if stage == "joint":
            average.add(engine.unet)
        return logs
    engine.step = followed
    t0 = time.perf_counter()
    engine.run()
    return engine, average, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    vc.add_case_arguments(ap)
    ap.add_argument("--out", default=str(vc.RESULTS / "joint_average.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name, image, labels, k, picks, rest, painted in vc.painted_cases(args):
        engine, average, train_s = trained_with_average(image, painted, picks, args)
        row = {"volume": name, "k": k, "seed": args.seed, "train_s": round(train_s, 1)}
        for tag in ("last", "mean"):
            if tag == "mean":
                average.apply(engine.unet)
            answer = engine.preview(list(range(len(labels))), native=True)
            row[tag] = {"answer": vc.scores(answer["refined"], labels, rest),
                        "match": vc.scores(answer["raw"], labels, rest)}
        rows.append(row)
        print(json.dumps({"volume": name, "k": k, "train_s": row["train_s"],
                          **{t: round(vc.mean_dice(row[t]["answer"]), 4) for t in ("last", "mean")}}), flush=True)
    for k in args.k:
        mine = [r for r in rows if r["k"] == k]
        if mine:
            last, mean = ([vc.mean_dice(r[t]["answer"]) for r in mine] for t in ("last", "mean"))
            print(f"k = {k}, {len(mine)} volumes: last weights {np.mean(last):.4f}, mean {np.mean(mean):.4f} "
                  f"(better on {sum(b > a for a, b in zip(last, mean))})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
