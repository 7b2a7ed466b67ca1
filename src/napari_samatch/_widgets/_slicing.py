"""From napari layers to the engine's input: a snapshot of the image and labels layers as a ``Volume``.

Plain functions of layer data, kept apart from the controller so they read (and test) on their own; the
slices, the held-out ones and the engine are the core's (``core/engine/rounds.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..core.data.volume import Volume, to_single_channel
from ..core.errors import DataError


def volume_from_layers(image_layer: Any, labels_layer: Any, class_names: Sequence[str]) -> Volume:
    """A snapshot of the image and labels layers (labels copied, so painting may go on)."""
    if image_layer is None:
        raise DataError("Choose an image layer in the Data dock first (File > Open, or the sample).")
    if labels_layer is None:
        raise DataError("Choose or create a labels layer in the Data dock, then paint a few slices.")
    image = to_single_channel(np.asarray(image_layer.data), rgb=bool(image_layer.rgb))
    if image.ndim not in (2, 3):
        raise DataError(f"Image '{image_layer.name}' has {image.ndim} dimensions; "
                        "choose a 2D or 3D image layer.")
    md = image_layer.metadata
    spacing = md.get("spacing") or tuple(float(s) for s in image_layer.scale)[-image.ndim:]
    return Volume(image, np.array(labels_layer.data, copy=True), tuple(float(s) for s in spacing),
                  md.get("affine"), name=image_layer.name, source=md.get("source") or layer_source(image_layer),
                  metadata={"class_names": list(class_names),
                            **({"nifti_codes": md["nifti_codes"]} if "nifti_codes" in md else {})})


def layer_source(layer: Any) -> str | None:
    """The file a layer was opened from, if napari knows it."""
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None
