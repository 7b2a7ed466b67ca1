"""The cross-cohort review's per-pixel labels and confidence on the CPU: ``probs.max(1)`` over channels-first
probabilities (what ``inference.class_map_and_confidence`` does) against the same ``max`` over a channels-last
copy (the layout that makes ``class_map``'s argmax fast), on one ACDC-sized volume.

    python benchmarks/review_confidence.py [--threads 1] [--repeats 5] [--size 256]

The volume is the first of ACDC's ``val.list`` when ``../shared/data/ACDC`` is there (its real shape), else a
synthetic 10 x 256 x 216 one; the Match model is a 4-class UNet with random weights (its speed does not depend on
them). Timed ``--repeats`` times each, the variants alternating so that a busy machine slows all alike:

- ``reduce``: the reduction alone over the full-resolution probabilities of the whole volume (n, 4, H, W):
  channels first (``max(1)``), channels last (``permute + contiguous + max(-1)``), and for reference
  ``argmax(1)`` channels first (the slow one, why ``class_map`` copies) and ``class_map``;
- ``predict``: ``cohort_review.predict_with_confidence`` as a whole (the UNet, resizing, the reduction, the slice
  scores), against the same loop with the channels-last reduction.

Both layouts give the same labels and scores (checked here; ``tests/test_cohort_review.py`` asserts it).
Prints the median with the fastest and slowest run, and writes ``benchmarks/results/review_confidence.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from napari_samatch.core.engine.cohort_review import predict_with_confidence
from napari_samatch.core.engine.review import slice_confidence
from napari_samatch.core.match.inference import class_map, class_map_and_confidence, volume_probs
from napari_samatch.core.match.unet import UNet

ACDC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ACDC"


def channels_last(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    confidence, labels = probs.permute(0, 2, 3, 1).contiguous().max(-1)
    return labels, confidence


def predict_channels_last(unet: UNet, image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``predict_with_confidence`` (axis 0) with the channels-last reduction."""
    labels, scores = np.zeros(image.shape, np.uint8), np.zeros(len(image))
    for start, probs in volume_probs(unet, image, size):
        lab, conf = channels_last(probs)
        lab_np, conf_np = lab.numpy().astype(np.uint8), conf.float().numpy()
        labels[start:start + len(lab_np)] = lab_np
        scores[start:start + len(lab_np)] = slice_confidence(lab_np, conf_np)
    return labels, scores


def once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def summary(seconds: list[float]) -> dict:
    ms = [1000 * s for s in seconds]
    return {"median_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1), "max_ms": round(max(ms), 1),
            "runs_ms": [round(m, 1) for m in ms]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=256, help="the training frame the UNet sees")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if (ACDC / "val.list").is_file():
        from napari_samatch.core.data.io import read_ssl4mis_volumes

        vol = read_ssl4mis_volumes(ACDC, "val.list")[0]
        image, source = vol.image, f"ACDC {vol.name}"
    else:
        image, source = np.random.default_rng(0).normal(0, 1, (10, 256, 216)).astype(np.float32), "synthetic"
    unet = UNet(1, 4)
    probs = torch.cat([p for _, p in volume_probs(unet, image, args.size)])  # (n, 4, H, W), full resolution

    first, last = predict_with_confidence(unet, image, args.size), predict_channels_last(unet, image, args.size)
    assert np.array_equal(first[0], last[0]) and np.array_equal(first[1], last[1]), "the outputs differ"
    assert all(torch.equal(a, b) for a, b in zip(class_map_and_confidence(probs), channels_last(probs)))

    variants = {"reduce_channels_first": lambda: class_map_and_confidence(probs),
                "reduce_channels_last": lambda: channels_last(probs),
                "argmax_channels_first": lambda: probs.argmax(1),
                "class_map": lambda: class_map(probs),
                "predict_channels_first": lambda: predict_with_confidence(unet, image, args.size),
                "predict_channels_last": lambda: predict_channels_last(unet, image, args.size)}
    res: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):  # alternating: a busy moment slows all
        for name, fn in variants.items():
            res[name].append(once(fn))
    out = {"volume": source, "shape": list(image.shape), "classes": 4, "size": args.size, "threads": args.threads,
           "repeats": args.repeats, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
           **{k: summary(v) for k, v in res.items()}}
    print(f"{source} {tuple(image.shape)}, 4 classes, UNet at {args.size}, {args.threads} thread(s), "
          f"median of {args.repeats} [fastest, slowest]:")
    for name in variants:
        r = out[name]
        print(f"  {name:24s} {r['median_ms']:9.1f} ms [{r['min_ms']:.1f}, {r['max_ms']:.1f}]")
    dest = Path(__file__).resolve().parent / "results" / "review_confidence.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
