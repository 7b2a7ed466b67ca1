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

from ..prior.prior import fuse_prior, gate_to_prior

__all__ = ["slice_confidence", "slice_agreement", "review_score", "completed_probs", "prior_preview", "preview",
           "refine_with_prompts"]


def slice_confidence(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """A slice's score for review (N,): the mean confidence over its structures; background alone is
    nearly always confident and would hide a doubtful structure (a slice with none: its mean)."""
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


def _answer(engine: Any, indices: list[int], probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """SAM-refined labels, their confidence and the prompts from class probabilities (no SAM: the argmax)."""
    if not engine.uses_sam():
        return probs.argmax(1), probs.max(1).values, None
    if engine.refiner.trusted is None:
        engine.calibrate_sam()
    with engine.lock, torch.no_grad():
        engine.sam.eval()
        refined = engine.refiner.refine(probs, indices, engine.images[indices])
    return refined.labels, refined.confidence, refined.prompts


def preview(engine: Any, indices: Sequence[int]) -> dict[str, Any]:
    """Prompts, the raw Match labels, the completed labels (``refined``: the prior fused in, then
    SAM-refined, then gated to the prior) and their
    confidence for some slices (numpy); ``slice_confidence`` ranks them."""
    indices = list(indices)
    raw = engine.predict(indices)
    probs = _fused(engine, raw, indices)
    out: dict[str, Any] = {"indices": indices, "raw": raw.argmax(1).cpu().numpy().astype(np.uint8)}
    labels, conf, prompts = _answer(engine, indices, probs)
    if prompts is not None:
        out["prompts"] = prompts.to_numpy_dict()
    labels, conf = labels.cpu().numpy().astype(np.uint8), conf.cpu().numpy().astype(np.float32)
    prior = engine.prior_of(indices)
    prior = None if prior is None else prior[0].cpu().numpy()
    if prior is not None:
        labels = gate_to_prior(labels, prior)
    out.update(refined=labels, confidence=conf,
               slice_confidence=review_score(labels, conf, out["raw"], prior).tolist())
    return out


def refine_with_prompts(engine: Any, index: int, prompts) -> dict[str, np.ndarray]:
    """Re-run SAM on one slice with user-edited prompts (the GUI's box edits), from its cached embedding."""
    with engine.lock, torch.no_grad():
        engine.sam.eval()
        probs = completed_probs(engine, [index])
        refined = engine.refiner.refine(probs, [index], engine.images[[index]], prompts=prompts)
    return {"refined": refined.labels[0].cpu().numpy().astype(np.uint8),
            "confidence": refined.confidence[0].cpu().numpy().astype(np.float32)}
