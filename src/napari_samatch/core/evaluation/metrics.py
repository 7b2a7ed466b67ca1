"""Segmentation metrics: Dice, HD95 and ASD per class, for 2D slices or 3D volumes (numpy).

Distances are in physical units when ``spacing`` (one value per axis, e.g. mm) is given, else in
voxels. Surfaces are the mask voxels removed by one erosion with the face-connected structuring element
(voxels on the array edge count as surface); distances come from ``scipy.ndimage.distance_transform_edt``
with ``sampling=spacing``.

* ``hd95``: the 95th percentile of the pooled surface distances in both directions (pred -> gt and
  gt -> pred), as ``medpy.metric.binary.hd95`` computes it.
* ``asd``: the mean distance from the prediction's surface to the ground truth's (one-directional, as
  ``medpy.metric.binary.asd`` that the ACDC semi-supervised literature reports);
  ``symmetric=True`` gives the average symmetric surface distance (ASSD).

Empty-mask conventions (per class):

* both prediction and ground truth empty: Dice 1.0, HD95 0.0, ASD 0.0, flagged ``empty=True`` so a
  benchmark can exclude the case (``summarise(..., exclude_empty=True)``);
* exactly one empty: Dice 0.0, HD95 and ASD NaN (a distance to nothing is undefined), flagged
  ``missed=True``; ``summarise`` averages distances over the defined cases and counts the missed ones.

This module is the package's one home for Dice: :func:`dice_per_class` (numpy arrays or tensors, every
class of a batch or volume at once) is what validation, SAM's calibration, the demo and the benchmarks call;
:func:`foreground_dice` is its NaN-for-absent form over classes 1..C-1 that they average with ``nanmean``.
``tests/test_metrics_reference.py`` checks Dice, HD95 and ASD against medpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..errors import DataError

METRIC_KEYS = ("dice", "hd95", "asd")


def _masks(pred: np.ndarray, gt: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise DataError(f"Prediction {pred.shape} and ground truth {gt.shape} differ in shape; "
                        "resample the prediction to the ground truth's grid.")
    return pred == cls, gt == cls


def _spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    sp = np.asarray(spacing, dtype=float).ravel()
    if sp.size != ndim or not np.all(sp > 0):
        raise DataError(f"spacing needs {ndim} positive values (one per axis), got {list(sp)}.")
    return sp


def _dice_masks(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances a-surface -> b-surface and b-surface -> a-surface (both masks non-empty)."""
    # crop to the union's bounding box plus one voxel: same surfaces and distances, far less EDT work
    idx = np.nonzero(a | b)
    sl = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    a, b = a[sl], b[sl]
    st = ndimage.generate_binary_structure(a.ndim, 1)
    sa = a & ~ndimage.binary_erosion(a, structure=st, border_value=0)
    sb = b & ~ndimage.binary_erosion(b, structure=st, border_value=0)
    dt_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    dt_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    return dt_b[sa], dt_a[sb]


def _distance_metrics(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> tuple[float, float, float]:
    """(hd95, asd, assd) for masks a = prediction, b = ground truth, with the empty conventions."""
    ea, eb = not a.any(), not b.any()
    if ea and eb:
        return 0.0, 0.0, 0.0
    if ea or eb:
        return math.nan, math.nan, math.nan
    d_ab, d_ba = _surface_distances(a, b, spacing)
    hd = float(np.percentile(np.concatenate([d_ab, d_ba]), 95))
    return hd, float(d_ab.mean()), float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))


def dice(pred: np.ndarray, gt: np.ndarray, cls: int) -> float:
    """Dice of class ``cls`` between integer label arrays (1.0 when both lack the class)."""
    return _dice_masks(*_masks(pred, gt, cls))


def hd95(pred: np.ndarray, gt: np.ndarray, cls: int, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance of class ``cls`` (0 both empty, NaN one empty)."""
    a, b = _masks(pred, gt, cls)
    return _distance_metrics(a, b, _spacing(spacing, a.ndim))[0]


def asd(pred: np.ndarray, gt: np.ndarray, cls: int, spacing: Sequence[float] | None = None,
        symmetric: bool = False) -> float:
    """Average surface distance pred -> gt of class ``cls`` (ASSD with ``symmetric=True``)."""
    a, b = _masks(pred, gt, cls)
    _, d, ds = _distance_metrics(a, b, _spacing(spacing, a.ndim))
    return ds if symmetric else d


def per_class_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                      spacing: Sequence[float] | None = None) -> dict[int, dict[str, float | bool]]:
    """``{class: {'dice', 'hd95', 'asd', 'empty', 'missed'}}`` for every foreground class 1..C-1."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise DataError(f"Prediction {pred.shape} and ground truth {gt.shape} differ in shape; "
                        "resample the prediction to the ground truth's grid.")
    sp = _spacing(spacing, pred.ndim)
    out: dict[int, dict[str, float | bool]] = {}
    for c in range(1, num_classes):
        a, b = pred == c, gt == c
        hd, d, _ = _distance_metrics(a, b, sp)
        ea, eb = not a.any(), not b.any()
        out[c] = {"dice": _dice_masks(a, b), "hd95": hd, "asd": d,
                  "empty": ea and eb, "missed": ea != eb}
    return out


def summarise(results: Sequence[dict[int, dict]], exclude_empty: bool = False) -> dict:
    """Means over volumes of :func:`per_class_metrics` results.

    Returns ``{'per_class': {c: {'dice', 'hd95', 'asd', 'n', 'missed', 'empty'}}, 'mean': {'dice',
    'hd95', 'asd'}}``. Distances average over the cases where they are defined (NaN when none is);
    ``n`` counts the cases used; ``exclude_empty=True`` leaves out cases where both masks are empty.
    The overall mean is the mean of the per-class means.
    """
    classes = sorted({c for r in results for c in r})
    per_class: dict = {}
    for c in classes:
        rows = [r[c] for r in results if c in r]
        used = [r for r in rows if not (exclude_empty and r.get("empty", False))]
        entry: dict = {"n": len(used), "missed": sum(bool(r.get("missed", False)) for r in used),
                       "empty": sum(bool(r.get("empty", False)) for r in rows)}
        for k in METRIC_KEYS:
            vals = np.array([r[k] for r in used], dtype=float)
            vals = vals[~np.isnan(vals)]
            entry[k] = float(vals.mean()) if vals.size else math.nan
        per_class[c] = entry
    mean = {}
    for k in METRIC_KEYS:
        vals = np.array([per_class[c][k] for c in classes], dtype=float)
        vals = vals[~np.isnan(vals)]
        mean[k] = float(vals.mean()) if vals.size else math.nan
    return {"per_class": per_class, "mean": mean}


def dice_per_class(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, num_classes: int,
                   ignore: int | None = -1, absent: float = 1.0) -> np.ndarray | torch.Tensor:
    """Dice of every class 0..C-1 over all pixels of ``pred`` and ``target`` (a slice, a batch or a volume).

    ``pred`` is integer labels shaped like ``target``, or scores (B, C, ...) that are argmaxed. Pixels where
    ``target == ignore`` are left out. A class absent from both gets ``absent`` (1.0; NaN to leave it out of a
    ``nanmean``). Tensors give a float32 tensor on their device (validation during training, no host
    round-trip); numpy arrays give float64.
    """
    if pred.ndim == target.ndim + 1:
        pred = pred.argmax(1)
    if pred.shape != target.shape:
        raise DataError(f"Prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
    if isinstance(pred, torch.Tensor):
        valid = target != ignore if ignore is not None else torch.ones_like(target, dtype=torch.bool)
        p, t = pred[valid].long(), target[valid].long()
        inter = torch.bincount(t[p == t], minlength=num_classes)[:num_classes].float()
        size = (torch.bincount(p, minlength=num_classes)[:num_classes]
                + torch.bincount(t, minlength=num_classes)[:num_classes]).float()
        return torch.where(size > 0, 2.0 * inter / size.clamp(min=1.0), torch.full_like(size, absent))
    pred, target = np.asarray(pred), np.asarray(target)
    valid = target != ignore if ignore is not None else np.ones(target.shape, bool)
    p, t = pred[valid].astype(np.int64), target[valid].astype(np.int64)
    inter = np.bincount(t[p == t], minlength=num_classes)[:num_classes].astype(np.float64)
    size = np.bincount(p, minlength=num_classes)[:num_classes] + np.bincount(t, minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(size > 0, 2 * inter / size, absent)


def foreground_dice(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
                    num_classes: int) -> np.ndarray:
    """Dice of classes 1..C-1 as a float64 numpy array, NaN where a class is absent from both (not counted
    by ``nanmean``); ``target == -1`` is ignored. Validation, the demo and the benchmarks report this."""
    d = dice_per_class(pred, target, num_classes, ignore=-1, absent=math.nan)
    return (d.double().cpu().numpy() if isinstance(d, torch.Tensor) else d)[1:]
