"""Latency of a box edit: SAM re-run on one slice with the user's prompts, on a cached embedding.

    python benchmarks/box_edit.py [--size 96 256] [--edits 20] [--threads 2]

This is the work behind the Review dock's box edit (``Engine.refine_with_prompts``): the Match model's
prediction of the slice, the moved box through LiteMedSAM's prompt encoder and mask decoder, and the
fusion into a labeled slice. The slice's embedding is cached first (a first edit on a slice SAM never
saw pays one encode on top, reported as ``encode_s``). Each edit moves the box by a few pixels, as a drag
does. The plugin adds the hand-over to and from the worker thread and the layer update (a few ms).

Reported per size: min, median and 90th percentile over ``--edits`` edits, and the share of wall time
the hypervisor took from a busy loop (``host_stall_fraction``): on a shared VM it explains the tail.
Prints a line per size and writes ``benchmarks/results/box_edit.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from step_time import host_stall_fraction

RESULTS = Path(__file__).resolve().parent / "results"


def measure(size: int, edits: int, threads: int) -> dict:
    from napari_samatch.core.config import preset
    from napari_samatch.core.data.datasets import phantom
    from napari_samatch.core.engine.engine import Engine
    from napari_samatch.core.sam.prompts import prompts_from_labels

    data, _, _ = phantom()
    config = preset("quick", size=size, warmup_iters=0, sam_iters=0, joint_iters=1, device="cpu",
                    threads=threads)
    engine = Engine(data, config.replace(num_classes=data.num_classes, class_names=list(data.class_names)))
    index = 5
    t0 = time.perf_counter()
    with torch.no_grad():
        engine.refiner.embeddings([index], engine.images[[index]])  # what training or the first edit did
    encode_s = time.perf_counter() - t0
    # the user's boxes: one per class around the slice's true structures (RV, Myo, LV)
    truth = data.hidden[index] if data.hidden[index] is not None else data.labels[index]
    truth = F.interpolate(torch.from_numpy(truth)[None, None].float(), size=(size, size), mode="nearest")
    prompts = prompts_from_labels(truth[:, 0].long(), data.num_classes)
    times = []
    for k in range(edits + 1):
        shift = float((k % 5) - 2)  # a drag: the box moves by -2..2 pixels
        moved = prompts._map(lambda t: t + shift if t.is_floating_point() and t.ndim == 2 else t)
        t0 = time.perf_counter()
        engine.refine_with_prompts(index, moved)
        if k:  # the first call warms oneDNN's kernel choice
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"size": size, "prompts": len(prompts), "edits": edits, "encode_s": round(encode_s, 2),
            "min_ms": round(times[0], 1), "median_ms": round(statistics.median(times), 1),
            "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs="+", default=[96, 256])
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "box_edit.json")
    args = ap.parse_args(argv)
    rows = []
    for size in args.size:
        row = measure(size, args.edits, args.threads)
        rows.append(row)
        print(f"{size:4d} px  {row['prompts']} prompt(s)  box edit min {row['min_ms']:.0f} ms, median "
              f"{row['median_ms']:.0f} ms, p90 {row['p90_ms']:.0f} ms  (first edit of a new slice adds an "
              f"encode: {row['encode_s']:.1f} s)", flush=True)
    report = {"machine": platform.platform(), "processor": platform.processor(), "threads": args.threads,
              "torch": torch.__version__, "host_stall_fraction": host_stall_fraction(), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"host stall fraction {report['host_stall_fraction']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
