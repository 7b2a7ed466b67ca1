"""npe2 sample data: the synthetic cardiac phantom with three 'hand-labeled' slices."""

from __future__ import annotations

import numpy as np

from .core.data.sample import make_cardiac_phantom, sample_labeled_slices


def make_sample_data() -> list[tuple]:
    """Phantom image layer and a labels layer holding only the three sample-labeled slices."""
    vol = make_cardiac_phantom()
    picked = sample_labeled_slices(vol)
    labels = np.zeros_like(vol.labels)
    labels[picked] = vol.labels[picked]
    meta = {"class_names": vol.metadata["class_names"], "spacing": vol.spacing, "affine": None,
            "source": None, "labeled_slices": list(picked)}
    return [
        (vol.image, {"name": "cardiac phantom", "scale": vol.spacing, "metadata": dict(meta), "colormap": "gray"},
         "image"),
        (labels, {"name": "labels", "scale": vol.spacing, "metadata": dict(meta)}, "labels"),
    ]
