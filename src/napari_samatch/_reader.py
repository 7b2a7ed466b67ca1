"""npe2 reader: NIfTI, SSL4MIS HDF5, TIFF and DICOM (a series folder or a .dcm file) -> image (+ labels) layer data.

Returns plain ``(data, kwargs, layer_type)`` tuples, so it works (and is tested) without a viewer.
Errors are ``DataError`` with a user-facing sentence; napari shows them as notifications.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from .core.data.io import file_kind, read_volume
from .core.data.volume import Volume

LayerData = tuple  # (data, kwargs, layer_type)
_OUR_KINDS = ("nifti", "h5", "tiff", "dicom")


def get_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Callable[..., list[LayerData]] | None:
    """Return :func:`read_layers` when every path is a file type this plugin reads, else ``None``."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or any(file_kind(p) not in _OUR_KINDS for p in paths):
        return None
    return read_layers


def read_layers(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """Read one or several files into napari layer data (image first, then labels when present)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        layers.extend(volume_to_layer_data(read_volume(p)))
    return layers


def volume_to_layer_data(vol: Volume) -> list[LayerData]:
    """Image layer data (scale from spacing, affine/source/spacing in metadata) and labels if any."""
    scale = tuple(float(s) for s in vol.spacing) if vol.spacing is not None else (1.0,) * vol.ndim
    meta: dict[str, Any] = {"affine": vol.affine, "source": vol.source, "spacing": vol.spacing}
    for key in ("class_names", "nifti_codes"):
        if key in vol.metadata:
            meta[key] = vol.metadata[key]
    layers: list[LayerData] = [
        (vol.image, {"name": vol.name, "scale": scale, "metadata": dict(meta), "colormap": "gray"}, "image")
    ]
    if vol.labels is not None:
        layers.append((vol.labels, {"name": f"{vol.name} labels", "scale": scale, "metadata": dict(meta)}, "labels"))
    return layers
