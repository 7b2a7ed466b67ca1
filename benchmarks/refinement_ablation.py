"""Which prompts and which fusion make SAM's pseudo-labels better than the Match model's own?

Loads a run's checkpoint (e.g. ``samatch-demo/checkpoints/last.pt`` from ``napari-samatch demo``), predicts
the phantom's unlabeled slices with its Match model, then refines them with its SAM under every combination
of prompt threshold, points and components, and reports per-class Dice against the hidden labels. The
embeddings are computed once; every variant only decodes.

    python benchmarks/refinement_ablation.py --checkpoint samatch-demo/checkpoints/last.pt
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_samatch.core.data.datasets import phantom
from napari_samatch.core.engine.engine import Engine
from napari_samatch.core.evaluation.metrics import foreground_dice
from napari_samatch.core.sam.fusion import fuse
from napari_samatch.core.sam.prompts import prompts_from_labels, prompts_from_probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="an engine checkpoint (last.pt) trained on the phantom")
    ap.add_argument("--out", default="benchmarks/results/refinement_ablation.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data, _, _ = phantom()
    unl = data.unlabeled_indices()
    engine = Engine.from_checkpoint(args.checkpoint, data, device="cpu")
    c = engine.config
    hidden = data.subset(unl).hidden_tensor(c.size).long()

    def dice(pred: torch.Tensor) -> list[float]:
        return [round(float(x), 3) for x in foreground_dice(pred.long(), hidden, data.num_classes)]

    rows = []

    def report(name: str, pred: torch.Tensor, n_prompts: int | None = None) -> None:
        d = dice(pred)
        rows.append({"variant": name, "dice": d, "mean": round(float(np.nanmean(d)), 3), "prompts": n_prompts})
        print(f"{name:55s} {d}  mean {np.nanmean(d):.3f}" + (f"  ({n_prompts} prompts)" if n_prompts else ""))

    t0 = time.perf_counter()
    engine.sam.eval()
    with torch.no_grad():
        probs = engine.predict(unl)
        emb = engine.refiner.embeddings(unl, engine.images[unl])
        report("raw Match prediction", probs.argmax(1))
        for pts, neg in ((0, 0), (1, 1)):
            gt = prompts_from_labels(hidden, data.num_classes, bbox_shift=c.bbox_shift, points=pts,
                                     negative_points=neg)
            logits, _ = engine.refiner.decode(emb, gt)
            report(f"ground-truth boxes, points {pts}/{neg} (upper bound)", fuse(logits, gt, data.num_classes)[0])
        for th, (pts, neg), comp in itertools.product((0.0, 0.5, 0.7), ((0, 0), (1, 0), (1, 1)), ("largest", "all")):
            pr = prompts_from_probs(probs, conf_thresh=th, bbox_shift=c.bbox_shift, components=comp,
                                    points=pts, negative_points=neg)
            logits, _ = engine.refiner.decode(emb, pr)
            labels, _ = fuse(logits, pr, data.num_classes, match_probs=probs)
            report(f"prompt_thresh {th}, points {pts}/{neg}, {comp}", labels, len(pr))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": args.checkpoint, "slices": len(unl), "size": c.size,
                               "seconds": time.perf_counter() - t0, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
