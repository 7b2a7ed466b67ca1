"""Confident predictions (or ground-truth labels) -> SAM box and point prompts.

For every image and foreground class the *confident region* is where the class wins the argmax **and**
its probability reaches ``conf_thresh``. Its 8-connected components become prompts:

* ``components='largest'`` - one box around the largest component (the paper's rule);
* ``components='all'`` - one box per component of at least ``min_area`` pixels;
* ``components='union'`` - one box around the whole class mask (ground-truth boxes for SAM fine-tuning,
  where SAM's target is the whole class mask).

A class with no component of ``min_area`` pixels gets **no** prompt (never a dummy box).
Boxes are ``x0, y0, x1, y1`` inclusive pixel indices (x = column) of the ``H x W`` frame, widened by
``bbox_shift`` on every side and clipped to ``[0, W-1] x [0, H-1]``.

Points (optional): positive points are the *deepest* pixels of the component - the maximum of an
erosion-count distance (alternating 4- and 8-neighbour erosions, an octagonal approximation of the
Euclidean distance transform) - ties broken by confidence, then raster order. The deepest pixel is
unambiguous for SAM (far from every edge, and inside a ring's wall for the myocardium); the
highest-confidence pixel is not, because UNet probabilities saturate at 1.0 over most of a structure
and the first saturated pixel often lies on its edge. Further points maximise
``min(depth, distance to the points chosen so far)``, so they spread over the structure. Negative points
use the same rule on the pixels inside the box that confidently belong to *another* class or to background
(for a myocardium box: the LV pool, which tells SAM "not the hole"). Missing points are padding: label -1 at (0, 0).

Everything runs on the input's device without per-pixel Python loops. Connected components use
``scipy.ndimage.label`` (one call for the whole batch, a structure that never links two planes) for
CPU tensors, and for other devices max-label propagation (separable 3x3 max filter) with pointer
jumping inside the bounding box of all foreground; both give identical prompts because components are
ranked and ordered by area and their first pixel in raster order, never by label value. Points are
searched in one box-sized window per prompt rather than the whole frame.

Default ``conf_thresh=0.7``: a plain argmax (0.5) lets uncertain fringe pixels bridge to neighbouring
structures and inflate the box; the loss threshold 0.95 erodes thin or small structures (myocardium,
apical slices) below ``min_area`` so their prompt disappears, and shrinks every box by more than
``bbox_shift`` gives back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..device import to_device
from ..errors import ConfigError, DataError

Components = Literal["largest", "all", "union"]


@dataclass
class Prompts:
    """SAM prompts for a batch of ``num_images`` frames of size ``frame_size = (H, W)``.

    ``image_index`` (P,) and ``class_index`` (P,, 1..C-1) say which image and class each prompt is for;
    ``boxes`` (P, 4) xyxy pixel indices; ``points`` (P, K, 2) xy and ``point_labels`` (P, K)
    (1 positive, 0 negative, -1 padding) or both None; ``scores`` (P,) mean confidence of the region.
    """

    image_index: torch.Tensor
    class_index: torch.Tensor
    boxes: torch.Tensor
    points: torch.Tensor | None
    point_labels: torch.Tensor | None
    scores: torch.Tensor
    num_images: int
    frame_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    def _map(self, fn) -> "Prompts":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in kw.items():
            if isinstance(value, torch.Tensor):
                kw[name] = fn(value)
        return Prompts(**kw)

    def to(self, device: torch.device | str) -> "Prompts":
        """The same prompts with every tensor on ``device``."""
        return self._map(lambda t: t.to(device))

    def select(self, keep: torch.Tensor) -> "Prompts":
        """The prompts picked by a boolean mask or index tensor (image numbering unchanged)."""
        keep = to_device(keep, self.image_index.device)  # once, not blocking: not once per field
        return self._map(lambda t: t[keep])

    def __add__(self, other: "Prompts") -> "Prompts":
        """These prompts followed by ``other``'s, of the same batch (both with points of one count, or neither)."""
        if (self.num_images, self.frame_size) != (other.num_images, other.frame_size):
            raise DataError("Prompts of different batches cannot be joined.")
        kw = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                kw[f.name] = torch.cat([a, b.to(a.device)])
            elif not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):  # no points, or the batch's size
                kw[f.name] = a
            else:
                raise DataError("Prompts with points cannot be joined with prompts without.")
        return Prompts(**kw)

    def to_numpy_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (for ``np.savez`` and the GUI); inverse of :meth:`from_numpy_dict`."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: v.detach().cpu().numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}
        out["num_images"] = np.asarray(self.num_images, dtype=np.int64)
        out["frame_size"] = np.asarray(self.frame_size, dtype=np.int64)
        return out

    @classmethod
    def from_numpy_dict(cls, d) -> "Prompts":
        """Rebuild prompts from :meth:`to_numpy_dict` output (or an ``np.load`` of it)."""
        need = ("image_index", "class_index", "boxes", "scores", "num_images", "frame_size")
        missing = [k for k in need if k not in d]
        if missing:
            raise DataError(f"The saved prompts lack {', '.join(missing)}; "
                            "save them with Prompts.to_numpy_dict().")
        has_pts = "points" in d and d["points"] is not None
        h, w = (int(v) for v in np.asarray(d["frame_size"]).ravel())
        return cls(
            image_index=torch.as_tensor(np.asarray(d["image_index"]), dtype=torch.long),
            class_index=torch.as_tensor(np.asarray(d["class_index"]), dtype=torch.long),
            boxes=torch.as_tensor(np.asarray(d["boxes"]), dtype=torch.float32),
            points=torch.as_tensor(np.asarray(d["points"]), dtype=torch.float32) if has_pts else None,
            point_labels=torch.as_tensor(np.asarray(d["point_labels"]), dtype=torch.long)
            if has_pts else None,
            scores=torch.as_tensor(np.asarray(d["scores"]), dtype=torch.float32),
            num_images=int(np.asarray(d["num_images"])),
            frame_size=(h, w),
        )


# ----------------------------------------------------------------------------- connected components
def label_components(mask: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """8-connected components of each (H, W) plane of a bool ``mask`` (N, H, W), never across planes.

    Returns int64 labels numbered 1..M (0 for background); the numbering differs between methods
    ('scipy', 'propagate', 'auto' = scipy on CPU, propagation elsewhere), the partition does not.
    """
    if method == "auto":
        method = "scipy" if mask.device.type == "cpu" else "propagate"
    if method == "scipy":
        from scipy import ndimage

        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[1] = True  # 8-connected in-plane, nothing links neighbouring planes
        lab, _ = ndimage.label(mask.detach().cpu().numpy(), structure=structure)
        return torch.from_numpy(lab.astype(np.int64)).to(mask.device)
    if method == "propagate":
        return _propagate_labels(mask)
    raise ConfigError(f"Unknown connected-component method {method!r}; use 'auto', 'scipy' or 'propagate'.")


def _max3x3(x: torch.Tensor, pad_value: float = 0) -> torch.Tensor:
    """3x3 max filter of the last two dims, separable (much faster than max_pool2d on the CPU)."""
    p = F.pad(x, (1, 1, 1, 1), value=pad_value)
    r = torch.maximum(torch.maximum(p[..., :-2, :], p[..., 1:-1, :]), p[..., 2:, :])
    return torch.maximum(torch.maximum(r[..., :-2], r[..., 1:-1]), r[..., 2:])


def _propagate_labels(mask: torch.Tensor) -> torch.Tensor:
    """Max-label propagation (3x3 max filter) plus pointer jumping, until nothing changes.

    Every pixel starts with its own global index + 1; a component ends with the label of its last pixel
    (its *root*), and the roots are then numbered 1..M in raster order.
    """
    rows, cols = mask.any(dim=(0, 2)), mask.any(dim=(0, 1))
    if not bool(rows.any()):
        return torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
    # work inside the bounding box of all foreground (medical structures fill a small part of a frame)
    r0, r1 = int(rows.to(torch.uint8).argmax()), len(rows) - int(rows.flip(0).to(torch.uint8).argmax())
    c0, c1 = int(cols.to(torch.uint8).argmax()), len(cols) - int(cols.flip(0).to(torch.uint8).argmax())
    full = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
    full[:, r0:r1, c0:c1] = _propagate_dense(mask[:, r0:r1, c0:c1].contiguous())
    return full


def _propagate_dense(mask: torch.Tensor) -> torch.Tensor:
    n, h, w = mask.shape
    total = n * h * w
    # int32 where it fits: int64 max/pad are several times slower on CPUs without AVX-512
    dtype = torch.int32 if total < 2**31 - 1 else torch.int64
    idx = torch.arange(1, total + 1, device=mask.device, dtype=dtype).view(n, h, w)
    zero = torch.zeros((), device=mask.device, dtype=dtype)
    lab = torch.where(mask, idx, zero)
    while True:
        new = torch.where(mask, _max3x3(lab), zero)
        # pointer jumping: label L started at pixel L-1 of the same component, whose label is >= L
        flat = new.view(-1)
        jumped = torch.gather(flat, 0, (flat.long() - 1).clamp_(min=0))
        new = torch.where(mask, torch.maximum(new, jumped.view(n, h, w)), zero)
        if torch.equal(new, lab):
            break
        lab = new
    flat = lab.view(-1).long()
    root_number = torch.cumsum(flat == idx.view(-1).long(), dim=0)
    out = torch.gather(root_number, 0, (flat - 1).clamp_(min=0)).view(n, h, w)
    return torch.where(mask, out, torch.zeros_like(out))


# ----------------------------------------------------------------------------- geometry helpers
def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight inclusive xyxy boxes (P, 4) of non-empty bool masks (P, H, W), via any() + argmax."""
    p, h, w = masks.shape
    rows = masks.any(dim=2).to(torch.uint8)
    cols = masks.any(dim=1).to(torch.uint8)
    y0 = rows.argmax(dim=1)
    y1 = h - 1 - rows.flip(1).argmax(dim=1)
    x0 = cols.argmax(dim=1)
    x1 = w - 1 - cols.flip(1).argmax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def erosion_depth(mask: torch.Tensor) -> torch.Tensor:
    """How many erosions each pixel of a bool mask (P, H, W) survives (outside the frame = background).

    Alternating cross and square structuring elements give an octagonal distance, a close
    approximation of the Euclidean distance to the nearest background pixel (1 on the mask's edge).
    """
    cur = mask.to(torch.float32)
    depth = torch.zeros_like(cur)
    step = 0
    while bool(cur.any()):
        depth += cur
        if step % 2 == 0:  # 4-neighbour (cross) erosion
            pad = F.pad(cur, (1, 1, 1, 1))
            cur = torch.minimum(torch.minimum(pad[..., 1:-1, :-2], pad[..., 1:-1, 2:]),
                                torch.minimum(pad[..., :-2, 1:-1], pad[..., 2:, 1:-1])) * cur
        else:  # 8-neighbour (square) erosion = 3x3 min filter
            cur = 1.0 - _max3x3(1.0 - cur, pad_value=1.0)
        step += 1
    return depth


def _pick_points(candidates: torch.Tensor, tiebreak: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` spread-out deep points of each bool mask (P, H, W): xy (P, k, 2) and validity (P, k)."""
    p, h, w = candidates.shape
    depth = erosion_depth(candidates)
    yy = torch.arange(h, device=candidates.device, dtype=torch.float32).view(1, h, 1)
    xx = torch.arange(w, device=candidates.device, dtype=torch.float32).view(1, 1, w)
    nearest = torch.full_like(depth, float("inf"))
    xy = torch.zeros(p, k, 2, device=candidates.device)
    valid = torch.zeros(p, k, dtype=torch.bool, device=candidates.device)
    for j in range(k):  # k is tiny; every step is batched over prompts and pixels
        score = torch.minimum(depth, nearest)
        best = (score + 1e-3 * tiebreak * (score > 0)).reshape(p, -1).argmax(dim=1)
        valid[:, j] = score.reshape(p, -1).gather(1, best[:, None]).squeeze(1) > 0
        py, px = (best // w).float(), (best % w).float()
        xy[:, j, 0], xy[:, j, 1] = px, py
        d = torch.sqrt((yy - py.view(p, 1, 1)) ** 2 + (xx - px.view(p, 1, 1)) ** 2)
        nearest = torch.minimum(nearest, d)
    xy[~valid] = 0.0
    return xy, valid


# ----------------------------------------------------------------------------- public builders
def prompts_from_probs(
    probs: torch.Tensor,
    conf_thresh: float = 0.7,
    bbox_shift: int = 5,
    components: Components = "largest",
    min_area: int = 10,
    points: int = 0,
    negative_points: int = 0,
    jitter: bool = False,
    generator: torch.Generator | None = None,
    method: str = "auto",
) -> Prompts:
    """Prompts from softmax probabilities ``probs`` (B, C, H, W) of a segmentation model.

    ``conf_thresh`` in [0, 1] selects confident pixels (see the module docstring for the default);
    ``jitter=True`` draws each box side's widening uniformly from ``0..bbox_shift`` with ``generator``
    (MedSAM's training augmentation). ``method`` picks the connected-component implementation.
    """
    if probs.dim() != 4 or probs.shape[1] < 2:
        raise DataError(f"Expected probabilities of shape (B, C, H, W) with C >= 2, got {tuple(probs.shape)}; "
                        "pass the softmax of the model's logits.")
    if not 0.0 <= float(conf_thresh) <= 1.0:
        raise ConfigError(f"conf_thresh must lie in [0, 1], got {conf_thresh}.")
    conf, arg = probs.detach().float().max(dim=1)
    label_map = torch.where(conf >= conf_thresh, arg, torch.full_like(arg, -1))
    return _build(label_map, conf, probs.shape[1], bbox_shift, components, min_area, points,
                  negative_points, jitter, generator, method)


def prompts_from_labels(
    labels: torch.Tensor,
    num_classes: int,
    bbox_shift: int = 5,
    components: Components = "union",
    min_area: int = 1,
    points: int = 0,
    negative_points: int = 0,
    jitter: bool = False,
    generator: torch.Generator | None = None,
    method: str = "auto",
) -> Prompts:
    """Ground-truth prompts from integer ``labels`` (B, H, W) for SAM fine-tuning on labeled slices.

    Negative label values mean "unknown" (no prompt, never a negative point). By default one box per
    class around its whole mask; ``jitter=True`` randomises the widening as MedSAM's training does.
    """
    if labels.dim() != 3:
        raise DataError(f"Expected labels of shape (B, H, W), got {tuple(labels.shape)}.")
    labels = labels.long()
    if labels.numel() and int(labels.max()) >= num_classes:
        raise DataError(f"Labels contain class {int(labels.max())} but num_classes is {num_classes}; "
                        "set num_classes to the number of classes including background.")
    label_map = labels.clamp(min=-1)
    conf = (label_map >= 0).float()
    return _build(label_map, conf, num_classes, bbox_shift, components, min_area, points,
                  negative_points, jitter, generator, method)


def _build(label_map, conf, num_classes, bbox_shift, components, min_area, points, negative_points,
           jitter, generator, method) -> Prompts:
    if num_classes < 2:
        raise ConfigError(f"num_classes counts background too and must be at least 2, got {num_classes}.")
    if components not in ("largest", "all", "union"):
        raise ConfigError(f"components must be 'largest', 'all' or 'union', got {components!r}.")
    if bbox_shift < 0 or min_area < 1 or points < 0 or negative_points < 0:
        raise ConfigError("bbox_shift, points and negative_points must be >= 0 and min_area >= 1.")
    b, h, w = label_map.shape
    dev, hw, cf = label_map.device, h * w, num_classes - 1
    classes = torch.arange(1, num_classes, device=dev).view(1, cf, 1, 1)
    fg = (label_map.unsqueeze(1) == classes).reshape(b * cf, h, w)  # plane = image * (C-1) + class-1

    if components == "union":
        comp = torch.where(fg, torch.arange(1, b * cf + 1, device=dev).view(-1, 1, 1), 0)
    else:
        comp = label_components(fg, method)
    comp_flat = comp.reshape(-1)
    fg_idx = torch.nonzero(comp_flat).squeeze(1)  # statistics over foreground pixels only
    ids = comp_flat[fg_idx]
    m = int(ids.max()) + 1 if ids.numel() else 1
    area = torch.bincount(ids, minlength=m)
    first = torch.full((m,), comp_flat.numel(), device=dev, dtype=torch.long)
    first = first.scatter_reduce(0, ids, fg_idx, reduce="amin")
    plane = (first // hw).clamp(max=b * cf - 1)  # ids without pixels are dropped below
    keep = area >= min_area
    keep[0] = False  # background
    if components == "largest":
        # canonical tie-break (first pixel in raster order) so every labelling method agrees
        key = torch.where(keep, area * hw + (hw - 1 - first % hw), torch.full_like(area, -1))
        best = torch.full((b * cf,), -1, device=dev, dtype=torch.long).scatter_reduce(0, plane, key, "amax")
        keep &= key == best[plane]
    sel = torch.nonzero(keep).squeeze(1)
    sel = sel[torch.argsort(first[sel])]  # image, then class, then raster order
    sel_plane = plane[sel]
    masks = comp_flat.view(b * cf, hw)[sel_plane] == sel.view(-1, 1)
    masks = masks.view(-1, h, w)
    image_index, class_index = sel_plane // cf, sel_plane % cf + 1
    n = sel.numel()

    tight = boxes_from_masks(masks).float() if n else torch.zeros(0, 4, device=dev)
    if jitter:
        shift = to_device(torch.randint(0, bbox_shift + 1, (n, 4), generator=generator), dev).float()
    else:
        shift = torch.full((n, 4), float(bbox_shift), device=dev)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=dev)
    hi = torch.tensor([w - 1, h - 1, w - 1, h - 1], device=dev, dtype=torch.float32)
    boxes = torch.minimum(torch.clamp(tight + sign * shift, min=0.0), hi)

    scores = (conf[image_index] * masks).flatten(1).sum(1) / area[sel].clamp(min=1).float()

    pts = lbl = None
    k = points + negative_points
    if k > 0:
        pts = torch.zeros(n, k, 2, device=dev)
        lbl = torch.full((n, k), -1, dtype=torch.long, device=dev)
    if k > 0 and n > 0:
        # work in one window per prompt that covers its box (all the same size): far fewer pixels
        bx = boxes.long()
        wh = (bx[:, 2:] - bx[:, :2] + 1).amax(dim=0)
        cw, ch = int(wh[0]), int(wh[1])
        ox = torch.minimum(bx[:, 0], torch.tensor(w - cw, device=dev))
        oy = torch.minimum(bx[:, 1], torch.tensor(h - ch, device=dev))
        rows = (oy.view(n, 1) + torch.arange(ch, device=dev)).view(n, ch, 1)
        cols = (ox.view(n, 1) + torch.arange(cw, device=dev)).view(n, 1, cw)
        pick = (image_index.view(n, 1, 1), rows, cols)
        win_conf = conf[pick]
        offset = torch.stack([ox, oy], dim=1).view(n, 1, 2).float()
        if points:
            comp_win = masks[(torch.arange(n, device=dev).view(n, 1, 1), rows, cols)]
            xy, ok = _pick_points(comp_win, win_conf, points)
            pts[:, :points] = torch.where(ok.unsqueeze(-1), xy + offset, xy)
            lbl[:, :points] = torch.where(ok, 1, -1)
        if negative_points:
            b4 = bx.view(n, 4, 1, 1)
            inside = (cols >= b4[:, 0]) & (cols <= b4[:, 2]) & (rows >= b4[:, 1]) & (rows <= b4[:, 3])
            lm = label_map[pick]
            other = inside & (lm >= 0) & (lm != class_index.view(n, 1, 1))
            xy, ok = _pick_points(other, win_conf, negative_points)
            pts[:, points:] = torch.where(ok.unsqueeze(-1), xy + offset, xy)
            lbl[:, points:] = torch.where(ok, 0, -1)
    return Prompts(image_index=image_index, class_index=class_index, boxes=boxes, points=pts,
                   point_labels=lbl, scores=scores, num_images=b, frame_size=(h, w))
