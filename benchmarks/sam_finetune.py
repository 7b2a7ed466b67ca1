"""Does fine-tuning SAM on the labeled slices keep what it could do zero-shot?

SAM-only steps (the engine's ``sam`` stage: ground-truth boxes of the labeled slices, jittered, BCE +
Dice) on the first 68 slices of ACDC's ``train_slices.list`` (3 cases); after 0, 10, 30 and 100 steps,
SAM's masks from the exact ground-truth boxes of ``--unlabeled`` slices it never trained on (spread evenly
over the rest of the list) are scored against their hidden labels: per mask (each prompt's own mask
against its class) and after the nested fusion (the pseudo-label the Match model would learn from).

    python benchmarks/sam_finetune.py                                                   # the defaults
    python benchmarks/sam_finetune.py --set sam_fill_targets=true --set sam_lr=0.00001  # filled targets, 1e-5
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import _protocol as proto
from napari_samatch.core.config import from_dict, preset
from napari_samatch.core.data import datasets
from napari_samatch.core.engine.engine import Engine
from napari_samatch.core.sam.fusion import fuse
from napari_samatch.core.sam.prompts import prompts_from_labels

CLASSES = ("RV", "Myo", "LV")


def dice_per_mask(logits: torch.Tensor, truth: torch.Tensor) -> float:
    m = logits > 0
    return float((2 * (m & truth).flatten(1).sum(1) / (m.flatten(1).sum(1) + truth.flatten(1).sum(1)).clamp(min=1)).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(proto.SHARED_DATA / "ACDC"))
    ap.add_argument("--steps", default="10,30,100", help="comma-separated SAM step counts to score after")
    ap.add_argument("--unlabeled", type=int, default=24, help="held-out slices scored")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any RunConfig setting")
    ap.add_argument("--out", default=str(proto.RESULTS / "sam_finetune.json"))
    args = ap.parse_args()

    full = datasets.ssl4mis_slices(args.data, labeled_count=68, lazy=True)
    unl_all = full.unlabeled_indices()
    pick = [unl_all[int(i)] for i in np.linspace(0, len(unl_all) - 1, args.unlabeled).round()]
    data = full.subset(list(range(68)) + pick)
    config = preset("quick", warmup_iters=0, sam_iters=0, joint_iters=0, size=128, eval_every=0,
                    checkpoint_every=0, device="cpu", threads=args.threads, seed=0)
    extra = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = from_dict({**config.to_dict(), **extra, "num_classes": 4, "class_names": list(data.class_names)})
    engine = Engine(data, config)
    unl = data.unlabeled_indices()
    hidden = data.subset(unl).hidden_tensor(config.size).long()
    engine.sam_optimizer()

    def score() -> dict:
        engine.sam.eval()
        with torch.no_grad():
            pr = prompts_from_labels(hidden, 4, bbox_shift=config.bbox_shift)
            logits, _ = engine.refiner.decode(engine.refiner.embeddings(unl, engine.images[unl]), pr)
            fused, _ = fuse(logits.float(), pr, 4, nested=config.nested_fusion)
        mask = {n: dice_per_mask(logits[pr.class_index == k], hidden[pr.image_index[pr.class_index == k]] == k)
                for k, n in enumerate(CLASSES, 1)}
        fusedd = {n: float(2 * ((fused == k) & (hidden == k)).sum() / ((fused == k).sum() + (hidden == k).sum()))
                  for k, n in enumerate(CLASSES, 1)}
        return {"per_mask": mask, "fused": fusedd, "fused_mean": float(np.mean(list(fusedd.values())))}

    rows, done, t0 = [], 0, time.perf_counter()
    for n in sorted({0, *(int(s) for s in args.steps.split(","))}):
        while done < n:
            engine.step("sam")
            done += 1
        r = {"steps": n, **score(), "wall_s": round(time.perf_counter() - t0, 1)}
        rows.append(r)
        print(f"after {n:4d} SAM steps: per mask " + "/".join(f"{r['per_mask'][c]:.3f}" for c in CLASSES)
              + "; fused " + "/".join(f"{r['fused'][c]:.3f}" for c in CLASSES)
              + f", mean {r['fused_mean']:.3f}  ({r['wall_s']} s)", flush=True)
    out = {"settings": {"sam_lr": config.sam_lr, "sam_fill_targets": config.sam_fill_targets,
                        "bbox_shift": config.bbox_shift, "size": config.size, "unlabeled": args.unlabeled},
           "commit": proto.git_commit(), "rows": rows}
    proto.RESULTS.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
