"""The layers a cohort member is shown in: one image, one labels and (from the review list) one prediction layer,
made once and then given each member's data.

Making a napari layer builds its vispy visual: 0.6-2.3 s per layer on the project's 2-core machine while a cohort
trained, and removing one cost about as much (test_switching_volumes_while_the_cohort_trains_never_freezes, before
this module). Replacing a layer's data costs milliseconds, so switching volumes replaces data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._reader import volume_to_layer_data
from ..core.data.volume import Volume

MEMBER, ROLE = "cohort_member", "cohort_role"  # metadata keys: which member, which of the three layers


def contrast_of(image: Any) -> tuple[float, float] | None:
    """The image's contrast limits (worker thread: a pass over the whole volume); None when it cannot tell."""
    if not isinstance(image, np.ndarray) or image.size == 0:
        return None
    lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def cohort_layers(viewer: Any) -> dict[str, Any]:
    """The layers showing a member, by role (image, labels, prediction)."""
    return {ly.metadata[ROLE]: ly for ly in viewer.layers if ly.metadata.get(MEMBER) is not None
            and ly.metadata.get(ROLE)}


def _replace(layer: Any, data: Any, name: str, scale: Any, metadata: dict) -> None:
    layer.metadata = metadata  # first: whoever reacts to the new data sees whose it is
    layer.data = data
    if tuple(layer.scale) != tuple(scale):  # each setter redraws (30-50 ms while training): only when it changes
        layer.scale = scale
    layer.name = name
    reset = getattr(layer, "_reset_history", None)  # napari keeps a Labels layer's undo steps across new data:
    if reset is not None:                           # an undo would paint the previous member's strokes here
        reset()


def show_member_image(viewer: Any, name: str, vol: Volume, contrast: tuple[float, float] | None) -> Any:
    """Put a member's image into the cohort's image layer (made on first use, else given the new data)."""
    (image, ikw, _), _ = volume_to_layer_data(vol)
    meta = {**ikw["metadata"], MEMBER: name, ROLE: "image"}
    img = cohort_layers(viewer).get("image")
    if img is None:
        return viewer.add_image(image, **{**ikw, "metadata": meta}, **({"contrast_limits": contrast} if contrast else {}))
    _replace(img, image, ikw["name"], ikw["scale"], meta)
    if contrast is not None:
        img.contrast_limits_range = contrast
        img.contrast_limits = contrast
    else:
        img.reset_contrast_limits()
    return img


def show_member_labels(viewer: Any, name: str, vol: Volume) -> Any:
    """Put a member's labels into the cohort's labels layer (made on first use); returns the layer."""
    _, (labels, lkw, _) = volume_to_layer_data(vol)
    meta = {**lkw["metadata"], MEMBER: name, ROLE: "labels"}
    lab = cohort_layers(viewer).get("labels")
    if lab is None:
        return viewer.add_labels(labels, **{**lkw, "metadata": meta})
    _replace(lab, labels, lkw["name"], lkw["scale"], meta)
    return lab


def show_member_prediction(viewer: Any, name: str, scale: Any, prediction: np.ndarray | None) -> Any:
    """Put a member's prediction into the cohort's prediction layer; the layer is removed when there is none (it
    would be another member's). Returns the layer, or None."""
    pred = cohort_layers(viewer).get("prediction")
    if prediction is None:
        if pred is not None:
            viewer.layers.remove(pred)
        return None
    meta = {MEMBER: name, ROLE: "prediction"}
    if pred is None:  # editable: the user corrects it, then accepts a slice of it
        return viewer.add_labels(prediction, name=f"{name} prediction", scale=scale, opacity=0.5, metadata=meta)
    _replace(pred, prediction, f"{name} prediction", scale, meta)
    return pred
