"""npe2 writer: a labels layer -> NIfTI (with the source image's affine when known) or TIFF."""

from __future__ import annotations

from typing import Any

import numpy as np

from .core.data.volume import Volume
from .core.data.writers import write_mask


def write_labels(path: str, data: Any, meta: dict | None) -> list[str]:
    """Write one labels layer; ``meta['metadata']`` may carry ``affine``/``spacing`` from our reader.

    Without a stored spacing, the layer's ``scale`` is used as the voxel size.
    """
    meta = meta or {}
    md = meta.get("metadata") or {}
    arr = np.asarray(data)
    spacing = md.get("spacing") or meta.get("scale")
    spacing = tuple(float(s) for s in spacing) if spacing is not None and len(spacing) == arr.ndim else None
    affine = md.get("affine")
    affine = np.asarray(affine, dtype=np.float64) if affine is not None else None
    like = Volume(
        image=np.broadcast_to(np.float32(0), arr.shape),  # shape only; no pixels are needed
        spacing=spacing,
        affine=affine,
        name=str(meta.get("name") or "labels"),
        source=md.get("source"),  # the image this came from: never written over (core.data.outputs)
        metadata={k: md[k] for k in ("nifti_codes",) if k in md},
    )
    return [str(p) for p in write_mask(path, arr, like=like)]
