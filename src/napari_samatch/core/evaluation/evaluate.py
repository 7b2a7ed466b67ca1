"""Scoring a trained Match model on labeled volumes: 3D Dice, HD95 and ASD per class and per volume."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.volume import Volume
from ..errors import DataError
from ..match.inference import predict_volume
from ..match.unet import UNet
from .metrics import per_class_metrics, summarise


def evaluate_volumes(unet: UNet, volumes: Sequence[Volume], size: int, class_names: Sequence[str],
                     device: torch.device | str = "cpu", progress: Callable[[int, int], None] | None = None,
                     ) -> dict[str, Any]:
    """Predict each volume slice by slice (axis 0) and score it against its labels.

    Distances use the volume's spacing when it has one (mm), else voxels (the SSL4MIS h5 files store
    none, so ACDC numbers are in voxels, as in the literature).
    """
    num_classes = len(class_names)
    for vol in volumes:  # before any prediction: a class the model cannot output would score silently as 0
        top = int(vol.labels.max()) if vol.labels is not None and vol.labels.size else 0
        if top >= num_classes:
            raise DataError(f"The labels of '{vol.name}' hold class {top}, but the model has {num_classes} classes "
                            f"({', '.join(class_names)}); evaluate it on data labeled with its classes, or train a "
                            f"model with {top + 1} classes.")
    rows, per_volume = [], []
    t0 = time.perf_counter()
    for i, vol in enumerate(volumes):
        if vol.labels is None:
            continue
        pred = predict_volume(unet, vol.image, size, device)
        m = per_class_metrics(pred, vol.labels, num_classes, spacing=vol.spacing)
        rows.append(m)
        per_volume.append({"name": vol.name, **{class_names[c]: {k: _num(v) for k, v in d.items()}
                                                for c, d in m.items()}})
        if progress:
            progress(i + 1, len(volumes))
    summary = summarise(rows)
    return {
        "per_class": {class_names[c]: v for c, v in summary["per_class"].items()},
        "mean": summary["mean"],
        "per_volume": per_volume,
        "volumes": len(rows),
        "units": "mm" if rows and volumes[0].spacing is not None else "voxels",
        "time_s": time.perf_counter() - t0,
    }


def _num(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    return float(v)
