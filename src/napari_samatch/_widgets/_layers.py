"""Conversions between the engine's training frame and napari layer data (no Qt here).

The engine works on square ``S x S`` slices; napari shows each slice at its own ``H x W``. Label maps go
back with nearest neighbour, confidence bilinearly, and prompt coordinates with the pixel-centre rule
that keeps a round trip exact: training pixel ``i`` covers ``[i, i+1) * H/S`` in continuous coordinates,
and napari puts pixel ``r`` at coordinate ``r`` (its edges at ``r - 0.5`` and ``r + 0.5``).

Prompts for display live in a :class:`PromptTable`: one row per box (slice, class, score and the
rectangle's ``top, left, bottom, right`` edges in napari data coordinates) and one row per point
(slice, class, label 1/0 and ``row, col``). The same table is what a session stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.data.slices import resize_labels_back
from ..core.sam.prompts import Prompts


# ----------------------------------------------------------------------------------- coordinates
def frame_to_display_box(box: np.ndarray, S: int, hw: tuple[int, int]) -> np.ndarray:
    """xyxy inclusive training-frame pixel box(es) -> [top, left, bottom, right] napari coordinates."""
    box = np.asarray(box, dtype=np.float64).reshape(-1, 4)
    sy, sx = hw[0] / S, hw[1] / S
    return np.stack([box[:, 1] * sy - 0.5, box[:, 0] * sx - 0.5,
                     (box[:, 3] + 1) * sy - 0.5, (box[:, 2] + 1) * sx - 0.5], axis=1)


def display_to_frame_box(rect: np.ndarray, S: int, hw: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`frame_to_display_box`; the result is clipped to the frame."""
    rect = np.asarray(rect, dtype=np.float64).reshape(-1, 4)
    fy, fx = S / hw[0], S / hw[1]
    out = np.stack([(rect[:, 1] + 0.5) * fx, (rect[:, 0] + 0.5) * fy,
                    (rect[:, 3] + 0.5) * fx - 1, (rect[:, 2] + 0.5) * fy - 1], axis=1)
    return np.clip(out, 0, S - 1)


def frame_to_display_points(xy: np.ndarray, S: int, hw: tuple[int, int]) -> np.ndarray:
    """(N, 2) xy training-frame points -> (N, 2) [row, col] napari coordinates."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return np.stack([(xy[:, 1] + 0.5) * hw[0] / S - 0.5, (xy[:, 0] + 0.5) * hw[1] / S - 0.5], axis=1)


def display_to_frame_points(rc: np.ndarray, S: int, hw: tuple[int, int]) -> np.ndarray:
    rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
    out = np.stack([(rc[:, 1] + 0.5) * S / hw[1] - 0.5, (rc[:, 0] + 0.5) * S / hw[0] - 0.5], axis=1)
    return np.clip(out, 0, S - 1)


# ----------------------------------------------------------------------------------- arrays
def slice_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    """(H, W) of one slice of an array of ``shape`` cut along ``axis`` (a 2D array is one slice)."""
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    rest = [int(s) for i, s in enumerate(shape) if i != axis % 3]
    return rest[0], rest[1]


def slice_view(arr: np.ndarray, index: int, axis: int) -> np.ndarray:
    """A writable view of slice ``index`` (2D arrays: the array itself)."""
    return arr if arr.ndim == 2 else np.moveaxis(arr, axis, 0)[index]


def slice_indices(mask2d: np.ndarray, index: int, axis: int, ndim: int) -> tuple[np.ndarray, ...]:
    """Full-array fancy indices of the True pixels of a slice mask (for ``Labels.data_setitem``)."""
    rows, cols = np.nonzero(mask2d)
    if ndim == 2:
        return rows, cols
    parts = [rows, cols]
    parts.insert(axis % 3, np.full(rows.shape, index, dtype=rows.dtype))
    return tuple(parts)


def resize_confidence(conf: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(N, S, S) float confidence -> (N, H, W), bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(conf, dtype=np.float32))[:, None]
    if tuple(t.shape[-2:]) != tuple(hw):
        t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    return t[:, 0].numpy()


def preview_to_display(preview: dict[str, Any], S: int, hw: tuple[int, int]) -> dict[str, Any]:
    """An engine preview (training frame, or already at ``hw``) -> arrays at ``hw`` and a :class:`PromptTable`
    (worker thread); prompts are always in the training frame."""
    indices = [int(i) for i in preview["indices"]]
    raw = resize_labels_back(np.asarray(preview["raw"], dtype=np.uint8), hw)
    refined = preview.get("refined")
    labels = resize_labels_back(np.asarray(refined, dtype=np.uint8), hw) if refined is not None else raw
    if preview.get("confidence") is not None:
        conf = resize_confidence(preview["confidence"], hw)
    else:
        conf = np.ones((len(indices), *hw), np.float32)
    table = PromptTable.from_prompts(preview["prompts"], indices, S, hw) if preview.get("prompts") else PromptTable()
    # A slice's score for review comes from the core (engine.slice_confidence); older previews without it
    # get the same rule at display resolution
    score = preview.get("slice_confidence")
    if score is None:
        fg = (labels > 0) | (raw > 0)
        score = [float(c[m].mean()) if m.any() else float(c.mean()) for c, m in zip(conf, fg)]
    return {"indices": indices, "labels": labels, "raw": raw, "confidence": conf, "prompts": table,
            "mean_confidence": score}


# ----------------------------------------------------------------------------------- prompt table
@dataclass
class PromptTable:
    """Display-frame prompts of many slices (see the module docstring)."""

    box: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))     # top, left, bottom, right
    box_slice: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box_score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    point: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))   # row, col
    point_slice: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    point_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    point_label: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def from_prompts(cls, d: dict[str, np.ndarray], indices: list[int], S: int, hw: tuple[int, int]) -> "PromptTable":
        """From ``Prompts.to_numpy_dict()`` of a preview whose image ``k`` is slice ``indices[k]``."""
        img = np.asarray(d["image_index"], dtype=np.int64).ravel()
        slices = np.asarray(indices, dtype=np.int64)[img] if len(img) else np.zeros(0, np.int64)
        cls_ = np.asarray(d["class_index"], dtype=np.int64).ravel()
        t = cls(box=frame_to_display_box(d["boxes"], S, hw), box_slice=slices, box_class=cls_,
                box_score=np.asarray(d["scores"], dtype=np.float64).ravel())
        pts, lab = d.get("points"), d.get("point_labels")
        if pts is not None and lab is not None and np.size(lab):
            lab = np.asarray(lab, dtype=np.int64)
            keep = lab >= 0  # -1 is padding
            prompt_of = np.broadcast_to(np.arange(lab.shape[0])[:, None], lab.shape)[keep]
            t.point = frame_to_display_points(np.asarray(pts)[keep], S, hw)
            t.point_slice, t.point_class, t.point_label = slices[prompt_of], cls_[prompt_of], lab[keep]
        return t

    def to_dict(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k)) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, np.ndarray]) -> "PromptTable":
        return cls(**{k: np.asarray(d[k]) for k in cls.__dataclass_fields__ if k in d})

    def slices(self) -> set[int]:
        return {int(s) for s in self.box_slice} | {int(s) for s in self.point_slice}

    def select(self, keep_slices: set[int] | None = None, drop_slices: set[int] | None = None) -> "PromptTable":
        def ok(s: np.ndarray) -> np.ndarray:
            m = np.ones(len(s), bool)
            if keep_slices is not None:
                m &= np.isin(s, list(keep_slices))
            if drop_slices:
                m &= ~np.isin(s, list(drop_slices))
            return m

        b, p = ok(self.box_slice), ok(self.point_slice)
        return PromptTable(self.box[b], self.box_slice[b], self.box_class[b], self.box_score[b],
                           self.point[p], self.point_slice[p], self.point_class[p], self.point_label[p])

    @staticmethod
    def concat(a: "PromptTable", b: "PromptTable") -> "PromptTable":
        return PromptTable(*(np.concatenate([np.asarray(getattr(a, k)), np.asarray(getattr(b, k))])
                             for k in PromptTable.__dataclass_fields__))

    def signature(self, index: int) -> tuple:
        """A hashable summary of one slice's prompts, to find which slices a user edit changed."""
        t = self.select({index})
        boxes = sorted(zip(t.box_class.tolist(), np.round(t.box, 2).tolist()))
        pts = sorted(zip(t.point_class.tolist(), t.point_label.tolist(), np.round(t.point, 2).tolist()))
        return (tuple((c, tuple(b)) for c, b in boxes), tuple((c, lab, tuple(p)) for c, lab, p in pts))

    # ------------------------------------------------------------------ to the engine
    def to_prompts(self, index: int, S: int, hw: tuple[int, int], pad: float = 0.1) -> Prompts:
        """One slice's prompts as a one-image :class:`Prompts` in the training frame.

        Each box is one prompt and carries every point of its class. A class with points but no box gets
        a box around its positive points widened by ``pad`` of the frame (SAM decoders expect a box).
        """
        t = self.select({index})
        boxes = list(display_to_frame_box(t.box, S, hw)) if len(t.box) else []
        classes = [int(c) for c in t.box_class]
        pts_xy = display_to_frame_points(t.point, S, hw) if len(t.point) else np.zeros((0, 2))
        for c in sorted(set(int(c) for c in t.point_class) - set(classes)):
            pos = pts_xy[(t.point_class == c) & (t.point_label == 1)]
            if not len(pos):
                continue
            m = pad * S
            boxes.append(np.clip([pos[:, 0].min() - m, pos[:, 1].min() - m, pos[:, 0].max() + m, pos[:, 1].max() + m],
                                 0, S - 1))
            classes.append(c)
        n = len(boxes)
        k = max([int(np.sum(t.point_class == c)) for c in classes] + [0])
        points = labels = None
        if k:
            points = np.zeros((n, k, 2), np.float32)
            labels = np.full((n, k), -1, np.int64)
            for j, c in enumerate(classes):
                sel = t.point_class == c
                points[j, : sel.sum()] = pts_xy[sel]
                labels[j, : sel.sum()] = t.point_label[sel]
        return Prompts(
            image_index=torch.zeros(n, dtype=torch.long),
            class_index=torch.as_tensor(classes, dtype=torch.long),
            boxes=torch.as_tensor(np.asarray(boxes, np.float32).reshape(n, 4)),
            points=torch.from_numpy(points) if points is not None else None,
            point_labels=torch.from_numpy(labels) if labels is not None else None,
            scores=torch.ones(n), num_images=1, frame_size=(S, S))

    # ------------------------------------------------------------------ to and from napari layers
    def shapes_data(self, axis: int, ndim: int) -> list[np.ndarray]:
        """Rectangles as (4, ndim) vertex arrays, the slice index at position ``axis`` (3D)."""
        out = []
        for (top, left, bottom, right), s in zip(self.box, self.box_slice):
            corners = np.array([[top, left], [top, right], [bottom, right], [bottom, left]], dtype=np.float64)
            if ndim == 3:
                corners = np.insert(corners, axis % 3, float(s), axis=1)
            out.append(corners)
        return out

    def points_data(self, axis: int, ndim: int) -> np.ndarray:
        pts = np.asarray(self.point, dtype=np.float64).reshape(-1, 2)
        if ndim == 3:
            pts = np.insert(pts, axis % 3, self.point_slice.astype(np.float64), axis=1)
        return pts

    @classmethod
    def from_layers(cls, shapes: list[np.ndarray], shape_class: np.ndarray, shape_score: np.ndarray | None,
                    points: np.ndarray, point_class: np.ndarray, point_label: np.ndarray, axis: int,
                    ndim: int) -> "PromptTable":
        """Read back what the user sees (and may have moved, resized, added or deleted)."""
        boxes, bslice = [], []
        for verts in shapes:
            v = np.asarray(verts, dtype=np.float64)
            if ndim == 3:
                bslice.append(int(round(float(v[:, axis % 3].mean()))))
                v = np.delete(v, axis % 3, axis=1)
            else:
                bslice.append(0)
            boxes.append([v[:, 0].min(), v[:, 1].min(), v[:, 0].max(), v[:, 1].max()])
        pts = np.asarray(points, dtype=np.float64).reshape(-1, ndim)
        pslice = np.rint(pts[:, axis % 3]).astype(np.int64) if ndim == 3 else np.zeros(len(pts), np.int64)
        if ndim == 3:
            pts = np.delete(pts, axis % 3, axis=1)
        n = len(boxes)
        score = np.ones(n) if shape_score is None else np.nan_to_num(np.asarray(shape_score, dtype=np.float64), nan=1.0)
        return cls(box=np.asarray(boxes, np.float64).reshape(n, 4), box_slice=np.asarray(bslice, np.int64),
                   box_class=np.asarray(shape_class, np.int64).reshape(n), box_score=score.reshape(n),
                   point=pts.reshape(-1, 2), point_slice=pslice, point_class=np.asarray(point_class, np.int64),
                   point_label=np.asarray(point_label, np.int64))
