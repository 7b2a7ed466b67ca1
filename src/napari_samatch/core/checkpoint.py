"""Checkpoints: written atomically with a hash, read back only as plain weights.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)``
reads it and a file that tries to run code is refused. Writing goes to a temporary file in the same
folder, is flushed to disk (fsync), then renamed over the target: a crash or a full disk leaves the
previous checkpoint intact. The SHA-256 of the bytes is stored beside it (``<name>.sha256``) and checked
on load, so a truncated copy is caught before it corrupts a run.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, StorageError

FORMAT = "napari-samatch/1"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise StorageError(f"Cannot write to {path.parent} ({exc.strerror}). Choose a folder you can write to.") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise StorageError(f"The disk holding {path.parent} is full. Free some space or choose another folder.") from exc
        raise StorageError(f"Could not write {path} ({exc.strerror}). Choose a folder you can write to.") from exc


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> str:
    """Save ``payload`` (plain types and tensors) atomically; returns the SHA-256 of the file."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    data = buffer.getvalue()
    digest = sha256_bytes(data)
    atomic_write_bytes(path, data)
    atomic_write_bytes(Path(str(path) + ".sha256"), (digest + "\n").encode())
    return digest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a napari-samatch checkpoint, checking its hash when the sidecar file is there."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Check the path, or train a model first.")
    data = path.read_bytes()
    sidecar = Path(str(path) + ".sha256")
    if sidecar.is_file():
        expected = sidecar.read_text().strip()
        if expected and expected != sha256_bytes(data):
            raise CheckpointError(
                f"Checkpoint {path} does not match its recorded hash: the file is truncated or was changed. "
                "Use an earlier checkpoint or the backup copy."
            )
    payload = load_weights_only(io.BytesIO(data), str(path), map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a napari-samatch checkpoint. Load SAM weights in the SAM backend setting instead."
        )
    return payload


def load_weights_only(source: Any, name: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with the failures turned into sentences."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{name} was refused: it is not a plain weights file (it asks to run code when loaded). "
            "Only load checkpoints from people you trust, re-saved as a state_dict."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{name} could not be read as a PyTorch checkpoint ({exc}). The file may be truncated.") from exc
