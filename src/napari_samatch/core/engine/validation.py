"""Validation during a run: per-volume Dice on held-out slices, and pseudo-label quality.

Dice is computed per volume (3D, at the slices' own resolution) and averaged over volumes, as the
benchmarks do; the pseudo-label quality compares the Match model's raw labels and SAM's refined labels
with the hidden ground truth of a fixed sample of unlabeled slices (only when the data has one, e.g.
ACDC in the SSL4MIS layout; a user's own volume has none).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import AbstractContextManager
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from ..config import RunConfig
from ..data.slices import SliceSet
from ..device import autocast
from ..evaluation.metrics import foreground_dice
from ..match.inference import predict_volume


class Validated(Protocol):
    """What validation uses of the engine (the engine imports this module, not the reverse)."""

    data: SliceSet
    config: RunConfig
    device: torch.device
    unet: torch.nn.Module
    lock: AbstractContextManager[Any]

    def preview(self, indices: Sequence[int]) -> dict[str, Any]: ...


class Validator:
    def __init__(self, engine: Validated, val: SliceSet, pseudo_sample: int = 32) -> None:
        self.engine = engine
        self.val = val
        groups: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(val.groups):
            groups[g].append(i)
        # slices of a volume in their stored order
        self.groups = {g: sorted(ix, key=lambda i: val.positions[i]) for g, ix in groups.items()}
        data = engine.data
        hidden = data.hidden_indices()  # without reading a lazy SliceSet's files
        rng = np.random.default_rng(engine.config.seed)
        self.pseudo_idx = sorted(rng.choice(hidden, size=min(pseudo_sample, len(hidden)), replace=False).tolist()) if hidden else []
        if self.pseudo_idx:
            self.pseudo_gt = data.subset(self.pseudo_idx).hidden_tensor(engine.config.size).to(engine.device)

    def evaluate(self, with_pseudo: bool = False) -> dict[str, Any]:
        e = self.engine
        names = e.config.class_names[1:]
        per_volume = []
        with e.lock:
            for g, ix in self.groups.items():
                gt_shapes = {self.val.image_shape(i) for i in ix}  # a lazy source reads only headers
                if len(gt_shapes) == 1:
                    stack = np.stack([self.val.images[i] for i in ix])
                    pred = predict_volume(e.unet, stack, e.config.size, e.device, amp=autocast(e.device, e.config.amp))
                    gt = np.stack([self.val.labels[i] if self.val.labels[i] is not None else self.val.hidden[i] for i in ix])
                else:  # 2D images of different sizes (e.g. BUSI): concatenate flattened
                    preds, gts = [], []
                    for i in ix:
                        preds.append(predict_volume(e.unet, self.val.images[i], e.config.size, e.device).ravel())
                        gts.append((self.val.labels[i] if self.val.labels[i] is not None else self.val.hidden[i]).ravel())
                    pred, gt = np.concatenate(preds), np.concatenate(gts)
                per_volume.append(foreground_dice(pred, gt, e.config.num_classes))
        per_class = np.nanmean(np.stack(per_volume), axis=0) if per_volume else np.full(len(names), np.nan)
        out: dict[str, Any] = {"val_dice": {n: float(d) for n, d in zip(names, per_class)},
                               "val_mean_dice": float(np.nanmean(per_class))}
        if with_pseudo and self.pseudo_idx:
            preview = e.preview(self.pseudo_idx)
            raw = foreground_dice(torch.from_numpy(preview["raw"]).to(e.device).long(), self.pseudo_gt,
                                  e.config.num_classes)
            out["pseudo_raw_dice"] = float(np.nanmean(raw))
            if "refined" in preview:
                ref = foreground_dice(torch.from_numpy(preview["refined"]).to(e.device).long(), self.pseudo_gt,
                                      e.config.num_classes)
                out["pseudo_refined_dice"] = float(np.nanmean(ref))
                out["pseudo_refined_by_class"] = {n: float(d) for n, d in zip(names, ref)}
            out["pseudo_raw_by_class"] = {n: float(d) for n, d in zip(names, raw)}
        return out
