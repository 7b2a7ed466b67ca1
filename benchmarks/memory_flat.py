"""Does memory stay flat over a long run? Resident memory sampled during 2 000 training iterations.

    python benchmarks/memory_flat.py [--iters 2000] [--method samatch] [--size 32] [--batch 2] [--every 100]

Trains on the bundled phantom with the bundled LiteMedSAM (SAM-Match, ``decoder`` mode: the embedding
cache fills during the first iterations and must then stop growing), validation and a checkpoint every
``--checkpoint-every`` iterations (both keep state: the history, the best weights), and samples the
process's resident set size (RSS) every ``--every`` iterations. The frame is small so 2 000 iterations
fit in minutes on a CPU; what could grow (cache, history, optimiser state, autograd graphs kept alive by
a stray reference, the allocator's free lists) does not depend on the frame size.

Reported: RSS after the warm-in (by default once 10 % of the iterations are done: the cache is full by
then), at the end, the largest sample, and the slope of a least-squares line through the samples after
the warm-in in MiB per 1 000 iterations. Prints a line per sample and writes
``benchmarks/results/memory_flat.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--method", choices=["samatch", "unimatch", "supervised"], default="samatch")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--every", type=int, default=100, help="sample RSS every N iterations")
    ap.add_argument("--checkpoint-every", type=int, default=500)
    ap.add_argument("--warm-in", type=float, default=0.1, help="share of the run before the slope is fitted")
    ap.add_argument("--batch", type=int, default=2, help="labeled and unlabeled slices per step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "memory_flat.json")
    args = ap.parse_args(argv)

    from napari_samatch.core.config import preset
    from napari_samatch.core.data.datasets import phantom
    from napari_samatch.core.engine import events as ev
    from napari_samatch.core.engine.engine import Engine

    proc = psutil.Process()
    data, _, _ = phantom()
    config = preset("quick", method=args.method, size=args.size, warmup_iters=0, sam_iters=0,
                    joint_iters=args.iters, batch_labeled=args.batch, batch_unlabeled=args.batch, sam_every=4,
                    eval_every=args.checkpoint_every, checkpoint_every=args.checkpoint_every,
                    device="cpu", threads=args.threads)
    engine = Engine(data, config.replace(num_classes=data.num_classes, class_names=list(data.class_names)))
    samples: list[tuple[int, float, float]] = []  # iteration, RSS MiB, seconds since start
    t0 = time.perf_counter()

    def on_event(e) -> None:
        if e.kind == ev.PROGRESS and (e.global_iteration % args.every == 0 or e.global_iteration == 1):
            rss = proc.memory_info().rss / 2**20
            samples.append((e.global_iteration, rss, time.perf_counter() - t0))
            print(f"it {e.global_iteration:5d}  RSS {rss:7.1f} MiB  {time.perf_counter() - t0:6.0f} s", flush=True)

    with tempfile.TemporaryDirectory() as run_dir:
        engine.run(on_event, checkpoint_dir=run_dir)
    its = np.array([s[0] for s in samples], float)
    rss = np.array([s[1] for s in samples])
    after = its >= args.warm_in * args.iters
    slope = float(np.polyfit(its[after], rss[after], 1)[0] * 1000) if after.sum() >= 2 else float("nan")
    report = {
        "machine": platform.platform(), "torch": torch.__version__, "method": args.method, "size": args.size,
        "iters": args.iters, "batch": args.batch, "seconds": round(time.perf_counter() - t0, 1),
        "rss_after_warm_in_mib": round(float(rss[after][0]), 1), "rss_end_mib": round(float(rss[-1]), 1),
        "rss_max_mib": round(float(rss.max()), 1), "slope_mib_per_1000_iters": round(slope, 2),
        "cache": engine.refiner.cache.stats() if args.method == "samatch" else None,
        "samples": [{"iteration": int(i), "rss_mib": round(r, 1), "seconds": round(s, 1)} for i, r, s in samples],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{args.method}, {args.iters} iterations at {args.size} px in {report['seconds']:.0f} s: RSS "
          f"{report['rss_after_warm_in_mib']:.0f} MiB after the warm-in, {report['rss_end_mib']:.0f} MiB at the end, "
          f"max {report['rss_max_mib']:.0f} MiB, slope {slope:+.1f} MiB per 1000 iterations; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
