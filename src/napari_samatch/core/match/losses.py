"""Losses of the UniMatch objective used by SAM-Match (ACDC setting).

Labels are (B, H, W) integer maps with -1 for "ignore". Every loss takes raw logits (B, C, H, W):
softmax is applied here exactly once (the reference applied cross-entropy to probabilities, i.e. a
second softmax; we do not). No loss reads a value back to the host, so a CUDA step stays asynchronous,
and a batch with no valid pixel gives a loss of 0 (with a gradient of 0), never NaN.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..device import one_hot
from ..errors import ConfigError, DataError

__all__ = ["dice_loss", "supervised_loss", "unsupervised_loss", "unimatch_total", "IGNORE"]

IGNORE = -1  #: label value of pixels that no loss looks at
DICE_SMOOTH = 1e-5  # as UniMatch's DiceLoss: an absent class predicted absent scores Dice 1


def _labels(target: Tensor, logits: Tensor) -> Tensor:
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise DataError(
            f"Label map shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            "labels must be (B, H, W) at the logits' resolution."
        )
    return target.long()


def dice_loss(
    logits: Tensor,
    target: Tensor,
    num_classes: int | None = None,
    ignore_mask: Tensor | None = None,
) -> Tensor:
    """Soft multi-class Dice loss of softmax(logits) against one-hot ``target``.

    As UniMatch's (SSL4MIS) ``DiceLoss``: per class c, over all valid pixels of the whole batch,
    ``1 - (2 sum p t + eps) / (sum p^2 + sum t^2 + eps)`` with eps = 1e-5, then the plain mean over
    **all** classes, background included. Pixels where ``ignore_mask`` is True or ``target == -1``
    count for nothing. ``num_classes`` defaults to ``logits.shape[1]``.
    """
    c = logits.shape[1] if num_classes is None else int(num_classes)
    if c != logits.shape[1]:
        raise ConfigError(f"num_classes={c} but the logits have {logits.shape[1]} channels.")
    target = _labels(target, logits)
    valid = target != IGNORE
    if ignore_mask is not None:
        valid = valid & ~ignore_mask.bool().reshape(valid.shape)
    v = valid[:, None].to(logits.dtype)
    prob = logits.float().softmax(dim=1) * v
    onehot = one_hot(target.clamp_min(0), c).to(prob.dtype) * v
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = (prob * prob).sum(dims) + onehot.sum(dims)  # onehot^2 == onehot
    dice = (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)
    return (1.0 - dice).mean()


def _masked_ce(logits: Tensor, target: Tensor, weight: Tensor, count: Tensor) -> Tensor:
    """Sum of per-pixel CE (on logits) times ``weight``, divided by ``count`` (>= 1)."""
    ce = F.cross_entropy(logits.float(), target.clamp_min(0), reduction="none")
    return (ce * weight).sum() / count.clamp_min(1)


def supervised_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Labeled loss ``(CE + Dice) / 2``; CE on logits (``F.cross_entropy``), label -1 ignored.

    CE is the mean over the non-ignored pixels (``ignore_index=-1`` semantics) and 0 when none is left.
    """
    target = _labels(target, logits)
    valid = target != IGNORE
    ce = _masked_ce(logits, target, valid.float(), valid.sum())
    return (ce + dice_loss(logits, target)) / 2.0


def unsupervised_loss(
    logits: Tensor,
    pseudo: Tensor,
    confidence: Tensor,
    threshold: float = 0.95,
    kind: str = "dice",
    ignore_mask: Tensor | None = None,
) -> Tensor:
    """Loss of a student view against a (refined) pseudo-label, ignoring unconfident pixels.

    ``kind='dice'`` (UniMatch's ACDC choice): :func:`dice_loss` with pixels ignored where
    ``confidence < threshold``, ``pseudo == -1`` or ``ignore_mask`` is True.
    ``kind='ce'`` (UniMatch's natural-image choice): per-pixel CE on logits, kept where confident,
    summed and divided by the number of *valid* pixels (``pseudo != -1`` and not ``ignore_mask``),
    so fewer confident pixels means a smaller loss, not a re-weighted one.
    """
    pseudo = _labels(pseudo, logits)
    if confidence.shape != pseudo.shape:
        raise DataError(f"Confidence map {tuple(confidence.shape)} must match the pseudo-label {tuple(pseudo.shape)}.")
    valid = pseudo != IGNORE
    if ignore_mask is not None:
        valid = valid & ~ignore_mask.bool().reshape(valid.shape)
    confident = valid & (confidence >= threshold)
    if kind == "dice":
        return dice_loss(logits, pseudo, ignore_mask=~confident)
    if kind == "ce":
        return _masked_ce(logits, pseudo, confident.float(), valid.sum())
    raise ConfigError(f"Unknown unsupervised loss {kind!r}; use 'dice' or 'ce'.")


def unimatch_total(loss_x: Tensor, loss_s1: Tensor, loss_s2: Tensor, loss_fp: Tensor) -> Tensor:
    """UniMatch's total: ``(x + 0.25 s1 + 0.25 s2 + 0.5 fp) / 2``."""
    return (loss_x + 0.25 * loss_s1 + 0.25 * loss_s2 + 0.5 * loss_fp) / 2.0
