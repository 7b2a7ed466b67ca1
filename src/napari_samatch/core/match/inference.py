"""Prediction with the Match model: slices in the training frame, volumes at their own resolution."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..data.slices import normalise_slice
from ..data.volume import check_axis
from ..errors import DataWarning
from .unet import UNet


@torch.no_grad()
def predict_probs(unet: UNet, images: torch.Tensor, batch_size: int = 16, amp=None) -> torch.Tensor:
    """Softmax probabilities (N,C,S,S) for canonical slices (N,1,S,S), in batches, eval mode."""
    was_training = unet.training
    unet.eval()
    amp = amp or contextlib.nullcontext()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            with amp:
                logits = unet(images[start:start + batch_size])
            out.append(F.softmax(logits.float(), dim=1))
    finally:
        unet.train(was_training)
    if not out:
        return images.new_zeros((0, unet.num_classes, *images.shape[-2:]))
    return torch.cat(out)


def class_map(probs: torch.Tensor) -> torch.Tensor:
    """``probs.argmax(1)`` of (N, C, H, W) scores, the same labels (the first maximum on a tie), computed over a
    channels-last copy: torch's CPU argmax over the channel axis of an (N, C, H, W) tensor is slow (190 ms per
    512 x 512 slice on one thread with torch 2.14, 26 ms this way), and full-resolution masks are made of it."""
    return probs.permute(0, *range(2, probs.ndim), 1).contiguous().argmax(-1)


def class_map_and_confidence(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, confidence)`` of (N, C, H, W) probabilities: each pixel's class, the same as ``class_map``'s
    (the first maximum on a tie), and its probability. Channels first on purpose: unlike argmax, torch's CPU
    ``max`` over the channel axis is fast, and a channels-last copy only adds its own cost (10 x 4 x 256 x 224 on
    one thread, torch 2.14: 18 ms this way, 27 to 36 ms over the copy; ``benchmarks/review_confidence.py``)."""
    confidence, labels = probs.max(1)
    return labels, confidence


def to_frame(slices: np.ndarray, size: int) -> torch.Tensor:
    """(N,H,W) numpy slices -> (N,1,S,S) normalised tensor in the training frame."""
    t = torch.from_numpy(np.stack([normalise_slice(s) for s in slices]))[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)


def volume_probs(unet: UNet, moved: np.ndarray, size: int, device: torch.device | str = "cpu",
                 batch_size: int = 16, amp=None, lock=None) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, probs)`` per chunk of slices of ``moved`` (N,H,W): softmax probabilities (n,C,H,W) resized back
    to the slices' own size. ``lock`` (the engine's) is held per chunk only, so training steps interleave."""
    h, w = moved.shape[1:]
    for start in range(0, len(moved), batch_size):
        chunk = to_frame(moved[start:start + batch_size], size).to(device)
        with lock if lock is not None else contextlib.nullcontext(), torch.no_grad():
            probs = predict_probs(unet, chunk, batch_size=batch_size, amp=amp)
        yield start, F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_volume(unet: UNet, volume: np.ndarray, size: int, device: torch.device | str = "cpu",
                   axis: int = 0, batch_size: int = 16, amp=None) -> np.ndarray:
    """Label a 2D or 3D array slice by slice along ``axis``; returns labels of the input's shape.

    Probabilities are resized back to each slice's size before the argmax (smoother than resizing labels).
    """
    arr = np.asarray(volume)
    axis = check_axis(axis, arr.ndim)
    if arr.size and float(arr.min()) == float(arr.max()):
        warnings.warn(f"The image holds a single value ({float(arr.flat[0]):g}) everywhere, so the mask says nothing "
                      "about it; check that the right file was given.", DataWarning, stacklevel=2)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
        axis = 0
    moved = np.moveaxis(arr, axis, 0)
    out = np.zeros(moved.shape, dtype=np.uint8)
    for start, probs in volume_probs(unet, moved, size, device, batch_size, amp):
        out[start:start + len(probs)] = class_map(probs).cpu().numpy().astype(np.uint8)
    out = np.moveaxis(out, 0, axis)
    return out[0] if squeeze else out
