"""A trained model as one file: the Match model (validation-best weights), SAM, and the settings.

``napari-samatch evaluate`` and ``predict`` need only this file, so results can be checked
independently on data the project never saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import check_state_fits, load_checkpoint, save_checkpoint
from ..config import RunConfig, from_dict
from ..device import conv_memory_format
from ..errors import CheckpointError
from ..match.unet import UNet


def export_model(engine, path: str | Path, best: bool = True) -> Path:
    """Write the engine's Match model (best-on-validation when known) and SAM weights to ``path``."""
    unet_state = engine.best_state if (best and engine.best_state is not None) else engine.unet.state_dict()
    payload: dict[str, Any] = {"kind": "model", "config": engine.config.to_dict(), "unet": unet_state,
                               "best": engine.best, "history": engine.history}
    if engine.loaded_sam is not None:
        payload["sam"] = engine.loaded_sam.state_dict()
    save_checkpoint(path, payload)
    return Path(path)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[UNet, RunConfig]:
    """The Match model and its settings from an exported model or a training checkpoint.

    A run folder (``train --out``) stands for the ``model.pt`` in it.
    """
    path = run_file(path, "model.pt", "to predict or evaluate")
    payload = load_checkpoint(path)
    config = from_dict(payload["config"])
    unet = UNet(1, config.num_classes)
    state = payload.get("unet_best") or payload.get("unet")
    if state is None:
        raise CheckpointError(f"{path} holds no Match model. Export one with 'napari-samatch train --out'.")
    check_state_fits(unet, state, f"The Match model in {path}", f"{config.num_classes}-class UNet",
                     "The file was changed or made by another version; export the model again.")
    device = torch.device(device)
    return unet.to(device, memory_format=conv_memory_format(device)).eval(), config


def run_file(path: str | Path, name: str, purpose: str) -> Path:
    """``path``, or ``path/name`` when ``path`` is a run folder holding it (a CheckpointError names the
    files to choose from when it does not)."""
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / name).is_file():
        return path / name
    found = sorted(p.name for p in path.glob("*.pt"))
    raise CheckpointError(f"{path} is a folder without {name}; give the file {purpose}"
                          + (f" (it holds {', '.join(found)})." if found else f", e.g. run/{name}."))
