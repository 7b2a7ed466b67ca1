"""The painted slices' prior: interpolated shapes for every slice, and its fusion with the Match model.

A user who painted three slices of a volume has told us more than three training examples: the shapes
in between are nearly known. The prior turns that into a label and a confidence for every slice of
every volume in the training set (slices of a volume are grouped by ``SliceSet.groups`` and ordered by
``positions``). The engine fuses it with the Match model's probabilities before SAM is prompted, so
early in training (a weak Match model) the boxes come from the interpolation, and later, far from the
painted slices (where the prior's confidence is low), from the Match model. Volumes without a painted
slice (an unlabeled volume of a cohort) get confidence 0: the prior is silent there.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .interpolation import interpolate_labels

__all__ = ["slice_prior", "fuse_prior"]


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
        interp = interpolate_labels(np.clip(stack, 0, None).astype(np.uint8), painted, num_classes)
        out[idx], conf[idx] = interp.labels, interp.confidence
    device = labels.device
    return torch.from_numpy(out).to(device), torch.from_numpy(conf).to(device)


def fuse_prior(probs: torch.Tensor, prior_labels: torch.Tensor, prior_conf: torch.Tensor,
               weight: float = 1.0) -> torch.Tensor:
    """Blend Match probabilities (B,C,S,S) with the prior: ``(1 - w) p + w onehot(prior)``, where
    ``w = weight x confidence`` per pixel. Still a probability distribution over the classes."""
    if weight <= 0:
        return probs
    w = (weight * prior_conf).clamp(0, 1).to(probs.dtype)[:, None]
    onehot = F.one_hot(prior_labels.clamp(min=0), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return (1 - w) * probs + w * onehot
