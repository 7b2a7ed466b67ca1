"""The cross-cohort review list: the slices of every volume of a cohort least likely to be right.

The Review dock ranks the slices of one volume by ``review.slice_confidence`` (with SAM's refinement and the
painted slices' prior when it has them). A cohort has neither for its unseen volumes (its slices are read on
demand, so there is no prior, and encoding every slice of every volume for SAM would cost minutes), so here the
score is ``slice_confidence`` of the current Match model's own prediction: the mean of its confidence over the
structures it finds on the slice (the Review dock's score without its agreement terms, which are 1 when the
answer is the Match model's). Volumes are predicted one at a time (``review_cohort`` is a generator), each chunk
of slices under the engine's lock, so a caller in a worker thread can show the list growing while training goes
on. The labeled slices of each volume are left out: they are the user's, not the model's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.cohort_state import CohortState
from ..data.io import read_volume
from ..data.volume import check_axis
from ..device import autocast
from ..match.inference import class_map_and_confidence, volume_probs
from ..match.unet import UNet
from .review import slice_confidence

__all__ = ["SliceScore", "VolumeReview", "CohortReview", "predict_with_confidence", "review_member", "review_cohort"]


@dataclass(frozen=True)
class SliceScore:
    """One row of the cross-cohort list."""

    member: str
    index: int         # the slice along the cohort's axis
    confidence: float  # ``slice_confidence`` of the Match model's prediction (0-1; low: look at it)


@dataclass
class VolumeReview:
    """One volume's scores (N,) and, when asked for, the prediction itself (the volume's array order)."""

    member: str
    scores: np.ndarray
    labeled: list[int]
    labels: np.ndarray | None = None


def predict_with_confidence(unet: UNet, image: np.ndarray, size: int, axis: int = 0,
                            device: torch.device | str = "cpu", amp=None, lock=None,
                            batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The Match model's labels of a 2D or 3D image (its own shape, uint8) and each slice's confidence score."""
    arr = np.asarray(image)
    squeeze = arr.ndim == 2
    arr, axis = (arr[None], 0) if squeeze else (arr, check_axis(axis, arr.ndim))
    moved = np.moveaxis(arr, axis, 0)
    labels = np.zeros(moved.shape, np.uint8)
    scores = np.zeros(len(moved), np.float64)
    for start, probs in volume_probs(unet, moved, size, device, batch_size, amp, lock):
        lab, conf = class_map_and_confidence(probs)
        lab_np, conf_np = lab.cpu().numpy().astype(np.uint8), conf.float().cpu().numpy()
        labels[start:start + len(lab_np)] = lab_np
        scores[start:start + len(lab_np)] = slice_confidence(lab_np, conf_np)
    labels = np.moveaxis(labels, 0, axis)
    return (labels[0] if squeeze else labels), scores


def review_member(engine: Any, state: CohortState, name: str, keep_labels: bool = False) -> VolumeReview:
    """Read one member and score its slices with ``engine``'s Match model (worker thread: reads the file)."""
    vol = read_volume(state.member(name).image)
    lock = getattr(engine, "lock", None) or contextlib.nullcontext()
    labels, scores = predict_with_confidence(engine.unet, vol.image, engine.config.size, state.axis,
                                             device=engine.device, amp=autocast(engine.device, engine.config.amp),
                                             lock=lock)
    return VolumeReview(name, scores, state.labeled(name), labels if keep_labels else None)


def review_cohort(engine: Any, state: CohortState, names: Iterable[str] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Iterator[VolumeReview]:
    """``review_member`` of each member in turn (lazily; ``should_stop()`` is asked before each volume)."""
    for name in list(names) if names is not None else state.names():
        if should_stop is not None and should_stop():
            return
        yield review_member(engine, state, name)


class CohortReview:
    """The list across the cohort: every unlabeled slice of the volumes scored so far, least confident first."""

    def __init__(self) -> None:
        self._scores: dict[str, np.ndarray] = {}
        self._left_out: dict[str, set[int]] = {}  # labeled or accepted: not the model's answer to check

    def add(self, review: VolumeReview) -> None:
        """A volume's scores (replacing older ones of that volume)."""
        self._scores[review.member] = np.asarray(review.scores, np.float64)
        self._left_out[review.member] = set(int(i) for i in review.labeled)

    def drop(self, member: str, index: int) -> None:
        """Leave a slice out from now on (it was accepted: the user's now)."""
        self._left_out.setdefault(member, set()).add(int(index))

    def relabel(self, labeled: Callable[[str], Iterable[int]]) -> None:
        """Leave out ``labeled(member)`` of every volume scored so far, in place of what was left out: the rule
        for labeled slices changed (label files declared complete, or not). Accepted slices are in ``labeled``."""
        self._left_out = {m: set(int(i) for i in labeled(m)) for m in self._scores}

    def members(self) -> list[str]:
        return list(self._scores)

    def rows(self, limit: int | None = None) -> list[SliceScore]:
        """The rows sorted by confidence ascending (ties: volume, then slice); at most ``limit``."""
        rows = [SliceScore(m, i, float(s)) for m, scores in self._scores.items()
                for i, s in enumerate(scores) if i not in self._left_out.get(m, ())]
        rows.sort(key=lambda r: (r.confidence, r.member, r.index))
        return rows if limit is None else rows[:limit]

    def clear(self) -> None:
        self._scores.clear()
        self._left_out.clear()
