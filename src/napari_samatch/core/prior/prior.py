"""The painted slices' prior: interpolated shapes for every slice, and its fusion with the Match model.

A user who painted three slices of a volume has told us more than three training examples: the shapes
in between are nearly known. The prior turns that into a label and a confidence for every slice of
every volume in the training set (slices of a volume are grouped by ``SliceSet.groups`` and ordered by
``positions``). The engine fuses it with the Match model's probabilities before SAM is prompted, so
early in training (a weak Match model) the boxes come from the interpolation, and later, far from the
painted slices (where the prior's confidence is low), from the Match model. Volumes without a painted
slice (an unlabeled volume of a cohort) get confidence 0: the prior is silent there.

``NativePrior`` is the same interpolation at the slices' own resolution, for the answer a user sees and
exports (the training frame's prior, from painted slices shrunk to 128 px, lost 0.01-0.02 Dice at k = 5).

The prior also says *where* a structure can be: ``gate_to_prior`` drops the parts of an answer that lie
away from it (a Match model trained on a few slices finds look-alikes far from the heart on the slices
farthest from the painted ones).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..device import one_hot
from .interpolation import interpolate_labels

__all__ = ["slice_prior", "NativePrior", "fuse_prior", "gate_to_prior", "prompts_on_prior", "one_painted_slice_note"]

# interpolate_labels' boundary ramp, in pixels of the training frame (its default)
EDGE_PX = 2.0


def one_painted_slice_note(groups: Sequence[str], labeled: Sequence[bool]) -> str | None:
    """The warning for a run whose only painted slice lies in a volume of three or more slices, else None.

    Measured on the 10 ACDC val volumes never used for choosing (docs/benchmarks.md): one painted slice
    gave 0.26-0.86 Dice per volume, 3 of 10 below the interpolation; two gave 10 of 10 above it.
    """
    painted = [g for g, lab in zip(groups, labeled) if lab]
    if len(painted) != 1 or sum(g == painted[0] for g in groups) < 3:
        return None
    return ("Only one slice is painted, so the result is a gamble (on real cardiac MRI 3 volumes of 10 came out "
            "worse than copying that slice): paint a second slice near the other end of the structure for a "
            "dependable one.")


def slice_prior(labels: torch.Tensor, groups: Sequence[str], positions: Sequence[int],
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior labels (N,S,S) long and confidence (N,S,S) float for training slices ``labels`` (N,S,S),
    where -1 marks a slice that is not labeled (painted)."""
    lab = labels.detach().cpu().numpy()
    out = np.zeros(lab.shape, np.int64)
    conf = np.zeros(lab.shape, np.float32)
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    for idx in members.values():
        idx = sorted(idx, key=lambda i: positions[i])
        stack = lab[idx]
        painted = [z for z in range(len(idx)) if (stack[z] >= 0).all()]
        if not painted:
            continue
        interp = interpolate_labels(np.clip(stack, 0, None).astype(np.uint8), painted, num_classes,
                                    edge_px=EDGE_PX)
        out[idx], conf[idx] = interp.labels, interp.confidence
    device = labels.device
    return torch.from_numpy(out).to(device), torch.from_numpy(conf).to(device)


class NativePrior:
    """The prior of each volume (a group of slices) at its own resolution, computed once per volume on demand.

    ``data`` is the engine's SliceSet (painted slices: ``labels[i]`` not None); pixel scales that were chosen
    in the ``frame``-pixel training frame (the boundary ramp) grow with the slices' size. ``decay``:
    interpolate_labels' ``slice_decay`` and ``between_decay`` (its defaults if absent), for
    benchmarks/answer_variants.py."""

    def __init__(self, data: Any, num_classes: int, frame: int, **decay: float) -> None:
        self.data, self.num_classes, self.frame = data, num_classes, frame
        self.decay = decay
        self._volumes: dict[str, tuple[dict[int, int], Any]] = {}

    def scale(self, shape: Sequence[int]) -> float:
        """Native pixels per training-frame pixel (the geometric mean of the two axes)."""
        return float(np.sqrt(shape[0] * shape[1])) / self.frame

    def arrays(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Prior labels (N,H,W) uint8 and confidence (N,H,W) float16 of slices of one shape, as stored: a CT
        volume's whole prior is 75 + 150 MB this way, and 630 + 315 MB as :meth:`of`'s long and float tensors."""
        labels, conf = [], []
        for i in indices:
            group = self.data.groups[i]
            if group not in self._volumes:
                self._volumes[group] = self._interpolate(group)
            where, interp = self._volumes[group]
            labels.append(interp.labels[where[i]])
            conf.append(interp.confidence[where[i]])
        return np.stack(labels), np.stack(conf)

    def of(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior labels (N,H,W) long and confidence (N,H,W) float of slices of one shape."""
        labels, conf = self.arrays(indices)
        return torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(conf.astype(np.float32))

    def _interpolate(self, group: str) -> tuple[dict[int, int], Any]:
        d = self.data
        members = sorted((i for i, g in enumerate(d.groups) if g == group), key=lambda i: d.positions[i])
        shape = d.image_shape(members[0])
        stack = np.zeros((len(members), *shape), np.uint8)
        painted = []
        for z, i in enumerate(members):
            if d.labels[i] is not None:
                stack[z] = d.labels[i]
                painted.append(z)
        interp = interpolate_labels(stack, painted, self.num_classes, edge_px=EDGE_PX * self.scale(shape), **self.decay)
        interp.confidence = interp.confidence.astype(np.float16)  # half the memory of a large volume's map
        return {i: z for z, i in enumerate(members)}, interp


def fuse_prior(probs: torch.Tensor, prior_labels: torch.Tensor, prior_conf: torch.Tensor,
               weight: float = 1.0) -> torch.Tensor:
    """Blend Match probabilities (B,C,S,S) with the prior: ``(1 - w) p + w onehot(prior)``, where
    ``w = weight x confidence`` per pixel. Still a probability distribution over the classes."""
    if weight <= 0:
        return probs
    w = (weight * prior_conf).clamp(0, 1).to(probs.dtype)[:, None]
    onehot = one_hot(prior_labels.clamp(min=0), probs.shape[1]).to(probs.dtype)
    return (1 - w) * probs + w * onehot


def gate_to_prior(labels: np.ndarray, prior: np.ndarray, margin: int = 8) -> np.ndarray:
    """``labels`` (N,H,W) without the pieces of a class that lie away from the prior's (N,H,W) region of that
    class, grown by ``margin`` pixels: each 8-connected piece touching that region is kept, the others become
    background. Gated only where the prior shows the class as one object on that slice: with several (say
    lesions) a new one elsewhere may be real, and with none the prior has nothing to say. Measured on ACDC
    val volumes (docs/benchmarks.md): it removes look-alikes far from the painted structures."""
    out = np.array(labels, copy=True)
    eight = np.ones((3, 3), bool)
    for z in range(len(out)):
        for c in np.unique(out[z]):
            if c == 0:
                continue
            region, pieces = ndimage.label(prior[z] == c, structure=eight)
            if pieces != 1:
                continue
            near = ndimage.binary_dilation(region > 0, structure=eight, iterations=margin)
            comp, n = ndimage.label(out[z] == c, structure=eight)
            touching = np.unique(comp[near & (comp > 0)])
            out[z][(comp > 0) & ~np.isin(comp, touching)] = 0
    return out


def prompts_on_prior(masks: torch.Tensor, image_index: torch.Tensor, class_index: torch.Tensor,
                     prior: torch.Tensor, limit: float = 0.75) -> torch.Tensor:
    """Which SAM masks (P,H,W) bool to keep (P,) bool: a prompt of class c is dropped where its mask lies more
    than ``limit`` of itself on the prior's (B,H,W) *other* structures, on a slice where the prior shows c.

    A box drawn around a Match model's region that swallowed a neighbour (ACDC's LV spanning both cavities)
    makes SAM return the neighbour; the gate keeps it (it touches the prior's region of its class), and its
    class's Dice falls to 0. ``Refiner.checked`` prompts that class again from its box on the prior. A mask on
    the prior's background is kept: far from the painted slices the prior may be the one that is wrong.
    """
    keep = torch.ones(len(masks), dtype=torch.bool)
    prior = prior.to(masks.device)
    for p in range(len(masks)):
        region, c = prior[int(image_index[p])], int(class_index[p])
        area = masks[p].sum()
        if area == 0 or not (region == c).any():
            continue
        off = (masks[p] & (region > 0) & (region != c)).sum()
        keep[p] = bool(off <= limit * area)
    return keep
