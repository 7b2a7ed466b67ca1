"""``napari-samatch demo``: SAM-Match end to end on the bundled synthetic cardiac volume.

Three slices count as hand-labeled; the other slices' ground truth stays hidden and is used only to
report how good the pseudo-labels are: the Match model's raw ones, SAM's refined ones, and the final
model's prediction.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from .console import progress_printer
from .core.checkpoint import atomic_write_json
from .core.config import preset
from .core.data.datasets import phantom
from .core.data.writers import write_mask
from .core.engine.engine import Engine
from .core.engine.export import export_model
from .core.evaluation.metrics import foreground_dice


def _mean_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    return float(np.nanmean(foreground_dice(torch.from_numpy(pred).long(), torch.from_numpy(gt).long(), num_classes)))


def run_demo(out: Path, device: str = "auto", quiet: bool = False, fast: bool = False) -> dict:
    t0 = time.perf_counter()
    data, vol, picked = phantom()
    unl = data.unlabeled_indices()
    if fast:
        # A supervised warm-up learns more per CPU second than UniMatch's four passes a step, and SAM-Match
        # needs a Match model good enough to put its boxes on the right structures (docs/benchmarks.md).
        config = preset("quick", warmup_method="supervised", warmup_iters=150, sam_iters=10, joint_iters=20,
                        eval_every=0, checkpoint_every=0, device=device)
    else:
        config = preset("quick", device=device, eval_every=0)
    config = config.replace(num_classes=data.num_classes, class_names=list(data.class_names))
    print(f"Synthetic cardiac volume {vol.image.shape}; hand-labeled slices {picked}; "
          f"{len(unl)} unlabeled slices whose hidden labels measure the pseudo-labels.", file=sys.stderr)
    engine = Engine(data, config)
    summary = engine.run(progress_printer(quiet), checkpoint_dir=out / "checkpoints")

    hidden = data.subset(unl).hidden_tensor(config.size).numpy()
    preview = engine.preview(unl)
    result = {
        "pseudo_raw_dice": _mean_dice(preview["raw"], hidden, data.num_classes),
        "pseudo_refined_dice": _mean_dice(preview["refined"], hidden, data.num_classes),
    }
    from .core.match.inference import predict_volume

    final = predict_volume(engine.unet, vol.image, config.size, engine.device)
    gt = vol.labels
    mask = np.ones(len(gt), bool)
    mask[picked] = False
    result["final_dice"] = _mean_dice(final[mask], gt[mask], data.num_classes)
    result["wall_s"] = time.perf_counter() - t0
    result["train_s"] = summary["train_time_s"]

    out.mkdir(parents=True, exist_ok=True)
    write_mask(out / "phantom_mask.nii.gz", final, like=vol)
    write_mask(out / "phantom_mask.tif", final, like=vol)
    export_model(engine, out / "model.pt")
    atomic_write_json(out / "demo.json", result)  # strict JSON: a NaN Dice is null
    print("Mean Dice on the unlabeled slices (RV, Myo, LV):")
    print(f"  Match model, raw pseudo-labels : {result['pseudo_raw_dice']:.3f}")
    print(f"  SAM-refined pseudo-labels      : {result['pseudo_refined_dice']:.3f}")
    print(f"  final Match model              : {result['final_dice']:.3f}")
    print(f"Masks written to {out}/phantom_mask.nii.gz and .tif; model to {out}/model.pt "
          f"({result['wall_s']:.0f} s)")
    return result
