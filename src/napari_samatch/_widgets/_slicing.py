"""From napari layers to the engine's input: a volume snapshot, the slice sets (held-out ones: core/data/holdout.py).

Plain functions of layer data, kept apart from the controller so they read (and test) on their own.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..core.config import RunConfig
from ..core.data.cohort import cohort_slices
from ..core.data.cohort_state import CohortState
from ..core.data.holdout import split_validation
from ..core.data.slices import SliceSet
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


def build_slices(vol: Volume, axis: int, labeled: Sequence[int], held: Sequence[int],
                 class_names: Sequence[str]) -> tuple[SliceSet, SliceSet | None]:
    """Training slices (held-out ones unlabeled, their labels hidden) and the validation set."""
    names = list(class_names)
    held_set = set(held)
    train = [i for i in labeled if i not in held_set]
    data = SliceSet.from_volume(vol, axis=axis, labeled=train, num_classes=len(names), class_names=names)
    if not held:
        return data, None
    full = SliceSet.from_volume(vol, axis=axis, labeled=list(labeled), num_classes=len(names), class_names=names)
    for i in held:
        data.hidden[i] = full.labels[i]  # lets the engine also score the pseudo-labels of these slices
    return data, full.subset(list(held))


def cohort_engine(cohort: CohortState, paintings: dict[str, np.ndarray], class_names: Sequence[str],
                  config: RunConfig, engine: Any = None, val_slices: int = 0) -> Any:
    """A new engine on every slice of the cohort (paintings over label files), or ``engine``'s next round on it;
    ``val_slices`` labeled slices, spread over the cohort, held out for validation. Runs in the worker thread:
    it reads the label files."""
    from ..core.engine.engine import Engine

    data = cohort_slices(cohort.members, cohort.axis, list(class_names) or None, paintings=paintings)
    data, val = split_validation(data, val_slices)
    cfg = config.replace(num_classes=data.num_classes, class_names=list(data.class_names), checkpoint_dir=None)
    if engine is None:
        return Engine(data, cfg, val=val)
    engine.next_round(data, cfg, val)
    return engine


def layer_source(layer: Any) -> str | None:
    """The file a layer was opened from, if napari knows it."""
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None
