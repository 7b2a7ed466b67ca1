"""Checkpoints: written atomically with a hash, read back only as plain weights.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)``
reads it and a file that tries to run code is refused. Writing goes to a temporary file in the same
folder, is flushed to disk (fsync), then renamed over the target: a crash or a full disk leaves the
previous checkpoint intact. The SHA-256 of the bytes is stored beside it (``<name>.sha256``) and checked
on load, so a truncated copy is caught before it corrupts a run.

This module is also the one atomic writer of the package (:func:`atomic_paths`, :func:`atomic_write_bytes`):
sessions, masks, SAM weights and the CLI's reports are written the same way, and a failed write says the
same sentence (:func:`storage_error`) wherever it happens.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import math
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the umask (``mkstemp`` would force 0o600)."""
    try:  # Linux says it without changing it (os.umask is process-wide and races other threads)
        with open("/proc/self/status") as fh:
            mask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _created_folders(folder: Path) -> list[Path]:
    """``folder.mkdir(parents=True)`` returning the folders it created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(created: list[Path]) -> None:
    """Undo ``_created_folders`` after a refused write: remove those folders that are still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (another file arrived) or gone: leave it and its parents


def disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` is the operating system saying the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def storage_error(path: Path, exc: OSError) -> StorageError:
    """The one sentence for a failed write of ``path``: what happened and what to do."""
    if disk_full(exc):
        full = "disk is full" if exc.errno == errno.ENOSPC else "disk quota is used up"
        return StorageError(f"The {full} while writing {path}; free some space or choose another folder.")
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"No permission to write {path} ({exc.strerror}); choose a folder you can write to.")
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
        return StorageError(f"Cannot write {path}: the folder {path.parent} does not exist; create it first.")
    return StorageError(f"Could not write {path} ({exc.strerror or exc}); choose a folder you can write to.")


@contextmanager
def atomic_paths(targets: Sequence[str | Path], make_folders: bool = True,
                 keep_extension: bool = False) -> Iterator[list[Path]]:
    """Temporary files beside ``targets`` that replace them only when the ``with`` block ends without error.

    Temporary files end in ``.tmp``, or with ``keep_extension`` in ``.tmp`` plus the target's extension (for
    writers that choose the format by the name); all are flushed to disk (fsync) before the first rename. On
    any error the temporary files are removed, the targets stay as they were and folders this call created
    are removed again (a full disk leaves no empty run folder); an ``OSError`` becomes a
    :class:`StorageError` sentence. The files get the mode a plain write would (the umask decides, not
    ``mkstemp``'s 0600), and each write removes the temporary files a killed writer left beside its target.
    ``make_folders=False`` refuses a missing folder instead of creating it (a user's export target).
    """
    targets = [Path(t) for t in targets]
    for t in targets:
        blocker = next((p for p in (t.parent, *t.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise StorageError(f"Cannot write {t}: {blocker} is a file, not a folder; choose another folder.")
        if not make_folders and not t.parent.is_dir():
            raise StorageError(f"Cannot write {t}: the folder {t.parent} does not exist; create it first.")
    temps: list[Path] = []
    created: list[Path] = []
    current = targets[0]
    done = False
    try:
        mode = new_file_mode()
        for t in targets:
            current = t
            created += _created_folders(t.parent)
            ext = (".nii.gz" if t.name.lower().endswith(".nii.gz") else t.suffix) if keep_extension else ""
            # the writer's PID in the name lets a later write remove what a killed writer left behind
            fd, tmp = tempfile.mkstemp(prefix=f".{t.name}.{os.getpid()}.", suffix=f".tmp{ext}", dir=t.parent)
            temps.append(Path(tmp))
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        yield temps
        for tmp, t in zip(temps, targets):
            current = t
            _fsync_file(tmp)
        for tmp, t in zip(temps, targets):
            current = t
            os.replace(tmp, t)
        done = True
        for folder in dict.fromkeys(t.parent for t in targets):
            _fsync_dir(folder)
        for t in targets:
            _remove_orphans(t)
    except OSError as exc:
        raise storage_error(current, exc) from exc
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if not done:
            _remove_empty(created)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    with atomic_paths([path]) as (tmp,):
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``atomic_write_bytes`` of ``obj`` as strict JSON: NaN and infinities (a metric with nothing to
    measure) become ``null``, which every JSON reader accepts, where a bare ``NaN`` is not JSON."""
    atomic_write_bytes(path, json.dumps(json_safe(obj), indent=2, allow_nan=False).encode())


def json_safe(obj: Any) -> Any:
    """``obj`` with numpy/torch numbers as Python numbers and non-finite floats as ``None``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:  # numpy or torch scalar
        return json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


def check_writable_folder(folder: str | Path, fix: str = "Choose another folder.") -> None:
    """Fail now, not after an hour of training, when ``folder`` cannot be created or written to.

    Creates nothing: it probes the nearest existing folder with a temp file that it removes again, so
    a run that then fails on its data leaves the disk as it was.
    """
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise StorageError(f"Cannot write to {folder}: {existing} is a file, not a folder. {fix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".samatch-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(f"Cannot write to {folder}: {existing} is not writable ({exc.strerror}). {fix}") from exc


def _remove_orphans(path: Path) -> None:
    """Delete temp files of ``path`` whose writer process is gone (killed mid-write, e.g. by a power cut).

    Temp files are ``.<name>.<pid>.<random>.tmp`` (checkpoints) or ``.tmp<ext>`` (masks: ``.tmp.nii.gz``).
    """
    if os.name != "posix":  # os.kill(pid, 0) probes a process only on POSIX (on Windows it signals it)
        return
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
        pid = tmp.name[len(path.name) + 2:].partition(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue  # an older naming, or this process's own write in flight
        try:
            os.kill(int(pid), 0)
            continue  # the writer is alive (or the PID was reused): leave it
        except ProcessLookupError:
            pass
        except OSError:
            continue  # alive, owned by another user
        tmp.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power cut after it keeps the new name); no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sidecar(path: str | Path) -> Path:
    return Path(str(path) + ".sha256")


def recorded_hashes(path: str | Path) -> list[str]:
    """The SHA-256 values the sidecar accepts for ``path`` (empty when there is no sidecar)."""
    try:
        return [line.strip() for line in _sidecar(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return []


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> str:
    """Save ``payload`` (plain types and tensors) atomically; returns the SHA-256 of the file.

    The checkpoint and its sidecar cannot be replaced in one step, so the sidecar first lists the new
    hash *and* the hash of the file still in place, then the checkpoint is replaced, then the sidecar
    is rewritten with the new hash alone. A process killed at any moment leaves a checkpoint whose hash
    the sidecar lists.
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    data = buffer.getvalue()
    digest = sha256_bytes(data)
    path = Path(path)
    # all listed hashes: a save killed mid-way may have left the sidecar listing two
    old = [h for h in recorded_hashes(path) if h != digest] if path.is_file() else []
    if old:
        atomic_write_bytes(_sidecar(path), "".join(h + "\n" for h in [digest, *old]).encode())
    atomic_write_bytes(path, data)
    atomic_write_bytes(_sidecar(path), (digest + "\n").encode())
    return digest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a napari-samatch checkpoint, checking its hash when the sidecar file is there."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file in it (last.pt to resume a run, "
                              "model.pt to predict or evaluate).")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Check the path, or train a model first.")
    try:
        data = path.read_bytes()
    except OSError as exc:  # e.g. a colleague's file without read permission for you
        raise CheckpointError(f"Cannot read {path} ({exc.strerror or exc}); ask its owner to let you read it "
                              "(e.g. chmod g+r), or copy it somewhere you can.") from None
    if _sidecar(path).is_file():
        expected = recorded_hashes(path)
        if expected and sha256_bytes(data) not in expected:
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


_GLOBAL_RE = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def load_weights_only(source: Any, name: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with the failures turned into sentences.

    A pickle that names a Python callable (``os.system``, a class) is refused and the callable named; any
    other pickle failure means the bytes are corrupt *or* a pickle format the safe loader does not read
    (e.g. a protocol-4 pickle of objects), and the message says both, since the two cannot be told apart
    without running the file.
    """
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": our message says it better
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL_RE.search(str(exc))
        if found:
            raise CheckpointError(
                f"{name} refused: not a plain weights file, it asks to run {found.group(1)} when loaded. Only load "
                "checkpoints from people you trust, re-saved as a state_dict."
            ) from None
        raise CheckpointError(
            f"{name} refused: it is corrupt, or a pickle of Python objects rather than plain weights (which could "
            "run code when loaded). Copy the file again, or re-save it as a state_dict."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{name} could not be read as a PyTorch checkpoint ({detail}); the file is truncated "
                              "or corrupt. Use an earlier checkpoint or copy the file again.") from None


def check_state_fits(model: torch.nn.Module, state: Any, name: str, what: str, fix: str) -> None:
    """Load ``state`` strictly into ``model``; a key or shape mismatch is one CheckpointError sentence."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{name} holds no {what} weights (a mapping of names to tensors). {fix}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]

    def few(items: list[str], n: int = 3) -> str:
        return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")

    problems = [f"{len(items)} {label} ({few(items)})" for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
    if problems:
        raise CheckpointError(f"{name} does not fit the {what} architecture: {'; '.join(problems)}. {fix}")
    model.load_state_dict(state, strict=True)
