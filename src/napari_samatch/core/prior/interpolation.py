"""Shape interpolation between painted slices: the first result a user sees, and the loop's prior.

What 3D Slicer's "Fill between slices" gives for free, and therefore the floor of everything slower:
each class's painted shapes are turned into signed distance maps and blended linearly between the two
nearest painted slices. Nested structures (the myocardium ring around the left ventricle) are handled
by interpolating each class as the region it encloses (the ring as its disk) and painting larger
classes first, so an inner class is cut out of the outer one again. A class present on one side only
shrinks linearly to nothing on the way to the other side.

Beyond the outermost painted slices the shapes are copied (``extrapolate="nearest"``) or left empty.
A confidence map says how far each pixel is from a painted slice and from the blended boundary; the
engine uses it to weigh the interpolated prior against the Match model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["interpolate_labels", "nearest_labels", "Interpolated"]


class Interpolated:
    """Interpolated labels (Z,H,W) uint8, a per-pixel confidence (Z,H,W) in [0, 1], and the painted slices."""

    def __init__(self, labels: np.ndarray, confidence: np.ndarray, painted: list[int]) -> None:
        self.labels, self.confidence, self.painted = labels, confidence, painted


def _painted(labels: np.ndarray, painted: Sequence[int] | None) -> list[int]:
    if painted is None:
        painted = np.flatnonzero(labels.reshape(len(labels), -1).any(1)).tolist()
    return sorted({int(i) for i in painted})


def _sdf(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Signed distance: negative inside, positive outside, zero halfway across the boundary."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    if mask.all():
        return np.full(mask.shape, -np.inf, np.float32)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return (outside - inside + np.where(mask, 0.5, -0.5)).astype(np.float32)


def _blend(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Linear blend of two signed distances at ``t`` in [0, 1]; a side without the class (inf) makes the
    other side's shape shrink linearly to nothing on the way there (its depth times the distance)."""
    if np.isinf(a).all() and np.isinf(b).all():
        return np.full(a.shape, np.inf, np.float32)
    if np.isinf(b).all():
        return a + t * max(float(-a.min()), 0.0)
    if np.isinf(a).all():
        return b + (1.0 - t) * max(float(-b.min()), 0.0)
    return (1.0 - t) * a + t * b


def _filled(label: np.ndarray, k: int) -> np.ndarray:
    return ndimage.binary_fill_holes(label == k)


def _paint_order(labels: np.ndarray, painted: list[int], num_classes: int) -> list[int]:
    """Classes by the mean area they enclose on the painted slices, largest first."""
    areas = {k: float(np.mean([_filled(labels[z], k).sum() for z in painted])) for k in range(1, num_classes)}
    return sorted(areas, key=lambda k: -areas[k])


def interpolate_labels(labels: np.ndarray, painted: Sequence[int] | None = None, num_classes: int | None = None,
                       spacing: Sequence[float] = (1.0, 1.0), extrapolate: str = "nearest",
                       slice_decay: float = 1.5, edge_px: float = 2.0,
                       between_decay: float | None = None) -> Interpolated:
    """Fill the unpainted slices of ``labels`` (Z,H,W) from the painted ones.

    ``painted``: the slices that count as painted (default: every slice with a non-zero label).
    ``extrapolate``: "nearest" copies the outermost painted slice outwards, "none" leaves those slices empty.
    Confidence: 1 on painted slices; elsewhere ``exp(-d / slice_decay)`` for a slice ``d`` slices from the
    nearest painted one, times how far the pixel is from the interpolated boundary (``edge_px`` scale).
    ``between_decay``: the decay for slices between two painted ones instead (None: ``slice_decay``); a
    slice outside the painted range is a copy of the outermost painted one and keeps ``slice_decay``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"interpolate_labels needs a (Z, H, W) label volume, got shape {labels.shape}")
    painted = _painted(labels, painted)
    z_count = labels.shape[0]
    num_classes = int(num_classes or (int(labels.max()) + 1))
    out = np.zeros(labels.shape, np.uint8)
    conf = np.zeros(labels.shape, np.float32)
    if not painted:
        return Interpolated(out, conf, painted)
    order = _paint_order(labels, painted, num_classes)
    sdfs = {z: {k: _sdf(_filled(labels[z], k), spacing) for k in order} for z in painted}
    for z in range(z_count):
        if z in sdfs:
            out[z], conf[z] = labels[z], 1.0
            continue
        below = [p for p in painted if p < z]
        above = [p for p in painted if p > z]
        if below and above:
            a, b = below[-1], above[0]
            t, d = (z - a) / (b - a), min(z - a, b - z)
            fields = {k: _blend(sdfs[a][k], sdfs[b][k], t) for k in order}
            decay = slice_decay if between_decay is None else between_decay
        elif extrapolate == "nearest":
            src = below[-1] if below else above[0]
            d = abs(z - src)
            fields = sdfs[src]
            decay = slice_decay
        else:
            continue
        margin = np.full(labels.shape[1:], np.inf, np.float32)
        for k in order:  # larger enclosed regions first: inner classes overwrite them
            f = fields[k]
            out[z][f < 0] = k
            margin = np.minimum(margin, np.abs(f))
        edge = 1.0 - np.exp(-np.where(np.isfinite(margin), margin, 1e3) / edge_px)
        conf[z] = np.exp(-d / decay) * edge
    return Interpolated(out, conf, painted)


def nearest_labels(labels: np.ndarray, painted: Sequence[int] | None = None) -> np.ndarray:
    """Each slice gets a copy of the nearest painted slice (ties: the lower one): the simplest baseline."""
    labels = np.asarray(labels)
    painted = _painted(labels, painted)
    out = np.zeros_like(labels)
    if not painted:
        return out
    p = np.asarray(painted)
    for z in range(len(labels)):
        out[z] = labels[p[np.argmin(np.abs(p - z))]]
    return out
