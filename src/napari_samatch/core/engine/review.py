"""What the Review dock shows for a slice, and what Export writes: the completed labels.

The Match model's probabilities are fused with the painted slices' prior (core/prior), SAM refines the
classes it earned (Refiner.calibrate) from boxes on that fusion, pieces far from the prior are dropped
(``gate_to_prior``), and every slice gets a score that ranks it for review. The engine delegates here;
nothing here trains.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..match.inference import class_map, class_map_and_confidence
from ..prior.prior import fuse_prior, gate_to_prior
from ..sam.refiner import PriorCheck

__all__ = ["slice_confidence", "slice_agreement", "review_score", "native_shape", "prior_preview",
           "preview", "refine_with_prompts"]

GATE_MARGIN = 8  # gate_to_prior's margin, in pixels of the training frame
# A SAM mask of the answer lying more than this share of itself on another structure of the painted slices' prior
# has its prompt replaced by its class's box on the prior (Refiner.checked; None: no check). On the ACDC val
# volumes' trained engines every limit from 0.6 to 0.8 gave the same answers (docs/benchmarks.md, "SAM's
# box lands on the neighbour"); 0.75 sits inside that plateau.
PRIOR_CHECK: float | None = 0.75


def slice_confidence(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """A slice's score for review (N,): the mean confidence over its structures; background alone is
    nearly always confident and would hide a doubtful structure (a slice with none: its mean)."""
    # a few slices at a time: a whole CT volume's products would be another 0.4 GB at once (same numbers)
    return np.concatenate([_slice_confidence(labels[s:s + 16], confidence[s:s + 16])
                           for s in range(0, len(labels), 16)] or [np.zeros(0)])


def _slice_confidence(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    fg = labels > 0
    sums = (confidence * fg).reshape(len(labels), -1).sum(1)
    counts = fg.reshape(len(labels), -1).sum(1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), confidence.reshape(len(labels), -1).mean(1))


def slice_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per slice (N,), the mean Dice over the structures present in either of two label maps (N,H,W);
    1 where neither holds a structure."""
    out = np.ones(len(a))
    for i in range(len(a)):
        ds = [2 * ((a[i] == c) & (b[i] == c)).sum() / ((a[i] == c).sum() + (b[i] == c).sum())
              for c in np.union1d(np.unique(a[i]), np.unique(b[i])) if c > 0]
        if ds:
            out[i] = float(np.mean(ds))
    return out


def review_score(labels: np.ndarray, confidence: np.ndarray, match: np.ndarray,
                 prior: np.ndarray | None) -> np.ndarray:
    """The Review dock's per-slice score (N,): the mean of the answer's confidence over its structures and
    its agreement with the Match model alone and with the painted slices' interpolation. Where the
    evidences disagree a slice needs a look. Chosen on the 10 ACDC val volumes of docs/benchmarks.md: rank
    correlation with slice Dice 0.75 at k = 3 (confidence alone 0.05), 0.81 at k = 1, 0.87 at k = 5."""
    parts = [slice_confidence(labels, confidence), slice_agreement(labels, match)]
    if prior is not None:
        parts.append(slice_agreement(labels, prior))
    return np.mean(parts, axis=0)


def _fused(engine: Any, probs: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    prior = engine.prior_of(indices)
    return probs if prior is None else fuse_prior(probs, *prior)


def native_shape(engine: Any, indices: Sequence[int]) -> tuple[int, int]:
    """The one (H, W) of some slices, for an answer at their own size."""
    shapes = {tuple(engine.data.image_shape(i)) for i in indices}
    if len(shapes) != 1:
        raise ValueError(f"An answer at the slices' own size needs slices of one size; got {sorted(shapes)}.")
    return shapes.pop()


class _Answer:
    """Where an answer is made: the training frame, or the slices' own size (``native``), with its prior and the
    pixel scale of the frame's pixel-sized rules (the gate's margin)."""

    def __init__(self, engine: Any, indices: list[int], native: bool) -> None:
        self.shape = native_shape(engine, indices) if native else None
        self.prior, self.scale = engine.prior_of(indices), 1.0  # None without a prior (native_prior too)
        if self.shape is not None and engine.native_prior is not None:
            self.prior = (*engine.native_prior.of(indices), engine.config.prior_weight)
            self.scale = engine.native_prior.scale(self.shape)

    def resized(self, frame_probs: torch.Tensor) -> torch.Tensor:
        """Probabilities (N,C,S,S) of the training frame at the size where the answer is made."""
        if self.shape is None:
            return frame_probs
        return F.interpolate(frame_probs, size=self.shape, mode="bilinear", align_corners=False)

    def probs(self, frame_probs: torch.Tensor) -> torch.Tensor | None:
        """The answer's probabilities, fused with its prior, at its size; None in the training frame (there
        they are the frame's fused probabilities, which the caller has already)."""
        if self.shape is None:
            return None
        p = self.resized(frame_probs)
        return p if self.prior is None else fuse_prior(p, *(t.to(p.device) for t in self.prior[:2]), self.prior[2])

    def gated(self, labels: np.ndarray) -> np.ndarray:
        if self.prior is None:
            return labels
        return gate_to_prior(labels, self.prior[0].cpu().numpy(), margin=int(round(GATE_MARGIN * self.scale)))


def prior_preview(engine: Any, indices: Sequence[int], native: bool = False) -> dict[str, Any] | None:
    """The prior alone as a preview (the first result a user sees, before any training); None without one."""
    indices = list(indices)
    if native and engine.native_prior is not None:  # what _Answer would take, without its long and float copies
        native_shape(engine, indices)  # slices of one size, as _Answer checks
        labels, conf16 = engine.native_prior.arrays(indices)  # uint8 already
        conf = conf16.astype(np.float32)
    else:
        prior = _Answer(engine, indices, native).prior
        if prior is None:
            return None
        labels, conf = prior[0].cpu().numpy().astype(np.uint8), prior[1].cpu().numpy().astype(np.float32)
    return {"indices": indices, "raw": labels, "confidence": conf,
            "slice_confidence": slice_confidence(labels, conf).tolist()}


def _refined(engine: Any, indices: list[int], probs: torch.Tensor, answer_probs: torch.Tensor | None,
             prompts=None, prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """SAM-refined labels, their confidence and the prompts (from the frame's ``probs``, or the user's
    ``prompts``), at the size of ``answer_probs`` (None: the frame's); no SAM and no user prompts: the argmax.
    ``prior``: the answer's prior labels, which SAM's masks from the Match model's boxes are checked against."""
    if prompts is None:
        if not engine.uses_sam():
            labels, conf = class_map_and_confidence(probs if answer_probs is None else answer_probs)
            return labels, conf, None
        if engine.refiner.trusted is None:
            engine.calibrate_sam()
    with engine.lock, torch.no_grad():
        engine.sam.eval()
        check = None
        if prior is not None and prompts is None and PRIOR_CHECK is not None:
            frame_prior = engine.prior_of(indices)  # the replacement boxes are drawn in the prompts' frame
            check = None if frame_prior is None else PriorCheck(prior, frame_prior[0], PRIOR_CHECK)
        refined = engine.refiner.refine(probs, indices, engine.images[indices], prompts=prompts,
                                        answer_probs=answer_probs, prior_check=check)
    return refined.labels, refined.confidence, refined.prompts


def preview(engine: Any, indices: Sequence[int], native: bool = False) -> dict[str, Any]:
    """Prompts (training frame), the raw Match labels, the completed labels (``refined``: the prior fused in,
    then SAM-refined, then gated to the prior) and their confidence for some slices (numpy), in the training
    frame or, ``native``, at the slices' own size (they must share one); ``slice_confidence`` ranks them."""
    indices = list(indices)
    where = _Answer(engine, indices, native)
    raw = engine.predict(indices)
    fused = _fused(engine, raw, indices)
    out: dict[str, Any] = {"indices": indices, "raw": class_map(where.resized(raw)).cpu().numpy().astype(np.uint8)}
    labels, conf, prompts = _refined(engine, indices, fused, where.probs(raw),
                                     prior=None if where.prior is None else where.prior[0])
    if prompts is not None:
        out["prompts"] = prompts.to_numpy_dict()
    labels = where.gated(labels.cpu().numpy().astype(np.uint8))
    conf = conf.cpu().numpy().astype(np.float32)
    prior = None if where.prior is None else where.prior[0].cpu().numpy()
    out.update(refined=labels, confidence=conf,
               slice_confidence=review_score(labels, conf, out["raw"], prior).tolist())
    return out


def refine_with_prompts(engine: Any, index: int, prompts, native: bool = False) -> dict[str, np.ndarray]:
    """Re-run SAM on one slice with user-edited prompts (the GUI's box edits), from its cached embedding."""
    where = _Answer(engine, [index], native)
    raw = engine.predict([index])
    fused = _fused(engine, raw, [index])
    labels, conf, _ = _refined(engine, [index], fused, where.probs(raw), prompts=prompts)
    return {"refined": labels[0].cpu().numpy().astype(np.uint8),
            "confidence": conf[0].cpu().numpy().astype(np.float32)}
