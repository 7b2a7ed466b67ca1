"""SAM and its refinement: backends behind one small interface, the embedding cache, prompts, fusion, refiner.

``load_sam("litemedsam")`` gives the bundled LiteMedSAM; ``load_sam("sam", path)`` a segment-anything
ViT (SAM ViT-B/L/H, MedSAM). Both encode images once and decode many prompts in one batched call
(see ``base.SamBackend``). ``prompts`` turns a Match prediction into boxes and points, ``fusion`` SAM's
per-prompt masks into one pseudo-label, and ``refiner`` does both for a batch with cached embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from .base import MODES, SamBackend, resolve_device
from .cache import EmbeddingCache
from .litemedsam import LiteMedSAM, load_litemedsam
from .segment_anything import SegmentAnything, load_segment_anything

BACKENDS = ("litemedsam", "sam")
_ALIASES = {"lite_medsam": "litemedsam", "lite-medsam": "litemedsam", "segment_anything": "sam",
            "segment-anything": "sam"}


def load_sam(
    backend: str = "litemedsam",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    model_type: str = "auto",
) -> SamBackend:
    """Load a SAM backend in eval mode: 'litemedsam' (bundled weights unless ``checkpoint``) or 'sam'.

    For 'sam', ``model_type`` is 'vit_b', 'vit_l', 'vit_h', 'medsam' or 'auto' (inferred from the file);
    ``load_sam("medsam", path)`` is short for ``load_sam("sam", path, model_type="medsam")``.
    """
    key = _ALIASES.get(str(backend).lower(), str(backend).lower())
    if key == "medsam":
        key, model_type = "sam", "medsam"
    if key == "litemedsam":  # model_type only concerns 'sam' (a UI may keep it when switching)
        return load_litemedsam(checkpoint, device=device)
    if key == "sam":
        return load_segment_anything(checkpoint, model_type=model_type, device=device)
    raise ConfigError(f"Unknown SAM backend {backend!r}. Use one of {', '.join(BACKENDS)}.")


__all__ = [
    "BACKENDS", "MODES", "EmbeddingCache", "LiteMedSAM", "SamBackend", "SegmentAnything",
    "load_litemedsam", "load_sam", "load_segment_anything", "resolve_device",
]
