"""Zero-shot LiteMedSAM (bundled weights) with ground-truth boxes on real ACDC validation slices.

DESIGN.md reports, over all validation slices: Dice RV 0.93, LV 0.91, myocardium 0.15 (a box around
a ring returns the filled disk). Here 12 slices (4 from each of 3 volumes, LV present) keep it fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_samatch.core.sam import load_sam

torch.set_num_threads(2)

FRAME = 256
MARGIN = 3
VOLUMES = ("patient028_frame01", "patient085_frame02", "patient019_frame01")
# Measured with this exact selection (torch 2.15, CPU): RV 0.958, Myo 0.172, LV 0.853. LV is lower than
# DESIGN.md's all-slice 0.91 because evenly spaced picks include apical slices with a tiny LV.
LV_MIN = 0.77  # measured minus 0.08
RV_MIN = 0.87


def load_slices(acdc: Path, volumes=VOLUMES, per_volume: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 256, 256) min-max images and (N, 256, 256) labels: evenly spaced slices where LV is present."""
    h5py = pytest.importorskip("h5py")
    images, labels = [], []
    for vid in volumes:
        with h5py.File(acdc / "data" / f"{vid}.h5", "r") as f:
            img, lab = f["image"][:], f["label"][:]
        with_lv = np.flatnonzero((lab == 3).reshape(len(lab), -1).any(1))
        for z in with_lv[np.linspace(0, len(with_lv) - 1, per_volume).round().astype(int)]:
            x = torch.from_numpy(img[z].astype(np.float32))[None, None]
            x = F.interpolate(x, size=(FRAME, FRAME), mode="bilinear", align_corners=False)[0]
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)  # per-slice min-max, as in training
            y = torch.from_numpy(lab[z].astype(np.int64))[None, None].float()
            y = F.interpolate(y, size=(FRAME, FRAME), mode="nearest")[0, 0].long()
            images.append(x)
            labels.append(y)
    return torch.stack(images), torch.stack(labels)


def gt_boxes(labels: torch.Tensor, cls: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_index, xyxy boxes) around each slice's class-``cls`` pixels, widened by MARGIN."""
    index, boxes = [], []
    for i, lab in enumerate(labels):
        ys, xs = torch.nonzero(lab == cls, as_tuple=True)
        if len(ys) == 0:
            continue
        index.append(i)
        boxes.append([max(0, int(xs.min()) - MARGIN), max(0, int(ys.min()) - MARGIN),
                      min(FRAME - 1, int(xs.max()) + MARGIN), min(FRAME - 1, int(ys.max()) + MARGIN)])
    return torch.tensor(index, dtype=torch.long), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    inter = (pred & target).sum().item()
    return 2.0 * inter / max(1, pred.sum().item() + target.sum().item())


def zero_shot_dice(model, images: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Mean Dice per class (1 RV, 2 Myo, 3 LV) over slices where the class is present."""
    with torch.no_grad():
        # Two at a time, as the refiner does on a CPU: one batch of 12 took 233 s against 130 s on the CI VM.
        emb = torch.cat([model.encode(images[i:i + 2]) for i in range(0, len(images), 2)])
        scores = {}
        for cls in (1, 2, 3):
            index, boxes = gt_boxes(labels, cls)
            logits, _ = model.decode(emb, index, boxes, frame_size=FRAME)
            scores[cls] = float(np.mean([dice(lg > 0, labels[i] == cls) for lg, i in zip(logits, index)]))
    return scores


def test_litemedsam_zero_shot_on_acdc(acdc):
    images, labels = load_slices(acdc)
    assert images.shape == (12, 1, FRAME, FRAME)
    scores = zero_shot_dice(load_sam("litemedsam"), images, labels)
    print(f"LiteMedSAM zero-shot Dice on 12 ACDC val slices: RV {scores[1]:.3f} Myo {scores[2]:.3f} "
          f"LV {scores[3]:.3f}")
    assert scores[3] >= LV_MIN
    assert scores[1] >= RV_MIN
    assert scores[2] < 0.5  # a box around the myocardial ring yields the filled disk (DESIGN.md)
