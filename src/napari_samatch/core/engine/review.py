"""What the Review dock shows for a slice, and what Export writes: the completed labels.

The Match model's probabilities are fused with the painted slices' prior (core/prior), SAM refines the
classes it earned (Refiner.calibrate) from boxes on that fusion, and every slice gets a score that ranks it
for review. The engine delegates here; nothing here trains.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..prior.prior import fuse_prior

__all__ = ["slice_confidence", "completed_probs", "prior_preview", "preview", "refine_with_prompts"]


def slice_confidence(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """A slice's score for review (N,): the mean confidence over its structures; background alone is
    nearly always confident and would hide a doubtful structure (a slice with none: its mean)."""
    fg = labels > 0
    sums = (confidence * fg).reshape(len(labels), -1).sum(1)
    counts = fg.reshape(len(labels), -1).sum(1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), confidence.reshape(len(labels), -1).mean(1))


def _fused(engine: Any, probs: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    prior = engine.prior_of(indices)
    return probs if prior is None else fuse_prior(probs, *prior)


def completed_probs(engine: Any, indices: Sequence[int]) -> torch.Tensor:
    """The Match model's probabilities fused with the painted slices' prior (the Match model alone without
    a prior): what SAM is prompted from, and the answer where SAM does not refine."""
    return _fused(engine, engine.predict(indices), indices)


def prior_preview(engine: Any, indices: Sequence[int]) -> dict[str, Any] | None:
    """The prior alone as a preview (the first result a user sees, before any training); None without one."""
    indices = list(indices)
    prior = engine.prior_of(indices)
    if prior is None:
        return None
    labels, conf = prior[0].cpu().numpy().astype(np.uint8), prior[1].cpu().numpy().astype(np.float32)
    return {"indices": indices, "raw": labels, "confidence": conf,
            "slice_confidence": slice_confidence(labels, conf).tolist()}


def preview(engine: Any, indices: Sequence[int]) -> dict[str, Any]:
    """Prompts, the raw Match labels, the completed labels (``refined``: the prior fused in, then
    SAM-refined) and their confidence for some slices (numpy); ``slice_confidence`` ranks them."""
    indices = list(indices)
    raw = engine.predict(indices)
    probs = _fused(engine, raw, indices)
    out: dict[str, Any] = {"indices": indices, "raw": raw.argmax(1).cpu().numpy().astype(np.uint8)}
    labels, conf = probs.argmax(1), probs.max(1).values
    if engine.uses_sam():
        if engine.refiner.trusted is None:
            engine.calibrate_sam()
        with engine.lock, torch.no_grad():
            engine.sam.eval()
            refined = engine.refiner.refine(probs, indices, engine.images[indices])
        out["prompts"] = refined.prompts.to_numpy_dict()
        labels, conf = refined.labels, refined.confidence
    labels, conf = labels.cpu().numpy().astype(np.uint8), conf.cpu().numpy().astype(np.float32)
    out.update(refined=labels, confidence=conf, slice_confidence=slice_confidence(labels, conf).tolist())
    return out


def refine_with_prompts(engine: Any, index: int, prompts) -> dict[str, np.ndarray]:
    """Re-run SAM on one slice with user-edited prompts (the GUI's box edits), from its cached embedding."""
    with engine.lock, torch.no_grad():
        engine.sam.eval()
        probs = completed_probs(engine, [index])
        refined = engine.refiner.refine(probs, [index], engine.images[[index]], prompts=prompts)
    return {"refined": refined.labels[0].cpu().numpy().astype(np.uint8),
            "confidence": refined.confidence[0].cpu().numpy().astype(np.float32)}
