"""Sessions: everything a user needs to close napari and continue later, in one folder.

A session folder holds ``session.json`` and the files it names: the user's labels, the refined
pseudo-labels with their confidence and the slices the user corrected, the prompt tables, the image
itself when it has no file of its own (the sample), a copy of the model checkpoint, and an open cohort's
folders with the volumes painted in napari (one ``.npz`` of label arrays). Every path in
``session.json`` is relative to the folder and must stay inside it; an absolute path or ``..`` is
refused, so opening a session someone sent never reads or overwrites files elsewhere.

Saving is atomic at the level of the whole session: data files get a new *generation* number in their
names, ``session.json`` is replaced last (atomically), and only then are the previous generation's files
removed. A crash at any point leaves a complete session, the old or the new one. A file whose bytes would
not change (the image, labels nobody painted since) is not written again: the new ``session.json`` names
the old generation's file. Every file's SHA-256 is recorded and checked on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..checkpoint import atomic_paths, atomic_write_bytes, sha256_bytes, sha256_file
from ..errors import CheckpointError, DataError, StorageError

FORMAT = "napari-samatch-session/1"
SESSION_FILE = "session.json"
ENV_HOME = "NAPARI_SAMATCH_HOME"
_ARRAYS = ("labels", "pseudo_labels", "confidence", "image")


@dataclass
class SessionState:
    """What a session holds. Arrays are in the image's own array order (``(Z, H, W)`` or ``(H, W)``)."""

    name: str = "session"
    settings: dict[str, Any] = field(default_factory=dict)  # run config + UI choices (axis, class names)
    labels: np.ndarray | None = None              # the user's labels: never lost
    labeled_slices: list[int] = field(default_factory=list)
    accepted_slices: list[int] = field(default_factory=list)
    pseudo_labels: np.ndarray | None = None       # refined pseudo-labels, with the user's corrections
    confidence: np.ndarray | None = None
    corrected_slices: list[int] = field(default_factory=list)
    prompts: dict[str, np.ndarray] = field(default_factory=dict)  # prompt tables (numeric arrays)
    image: np.ndarray | None = None               # saved only when the image has no file
    source: str | None = None                     # the image's file, for information only
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    checkpoint: Path | None = None                # absolute after load; inside the session folder
    checkpoint_sha256: str | None = None
    saved_at: float = 0.0
    cohort: dict[str, Any] | None = None          # an open cohort (CohortState.session_doc): folders, axis
    cohort_paintings: dict[str, np.ndarray] = field(default_factory=dict)  # member name -> its painted labels


# ----------------------------------------------------------------------------------- folders
def samatch_home() -> Path:
    """``$NAPARI_SAMATCH_HOME`` or ``~/.napari-samatch``: where autosaves go when no better place exists."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".napari-samatch")


def safe_name(name: str) -> str:
    """A file-name-safe version of a layer or volume name."""
    cleaned = re.sub(r"[^\w\-.]+", "_", name).strip("._")
    return cleaned or "session"


def default_session_dir(name: str, source: str | os.PathLike | None = None) -> Path:
    """Autosave folder: ``<source folder>/<stem>.samatch`` when that folder is writable, else
    ``<home>/autosave/<name>`` (see :func:`samatch_home`)."""
    if source:
        src = Path(source)
        parent = src.parent if src.suffix or src.is_file() else src
        stem = src.name.split(".")[0] or safe_name(name)
        if parent.is_dir() and os.access(parent, os.W_OK):
            return parent / f"{safe_name(stem)}.samatch"
    return samatch_home() / "autosave" / safe_name(name)


def inside(folder: str | os.PathLike, relative: str) -> Path:
    """Resolve ``relative`` within ``folder``; refuse absolute paths and anything escaping the folder."""
    rel = PurePosixPath(str(relative).replace("\\", "/"))
    if rel.is_absolute() or re.match(r"^[A-Za-z]:", str(relative)) or ".." in rel.parts or not rel.parts:
        raise DataError(f"The session names the file '{relative}', which is outside its folder. "
                        "Session files may only refer to files inside the session folder; this one was edited "
                        "or is not a napari-samatch session.")
    root = Path(folder).resolve()
    path = (root / Path(*rel.parts)).resolve()
    if not path.is_relative_to(root):  # a symlink pointing out of the folder
        raise DataError(f"The session file '{relative}' points outside the session folder {root}; refusing to use it.")
    return path


# ----------------------------------------------------------------------------------- save
class _Hasher:
    """A write-only file for ``np.save`` that keeps only the SHA-256 of what it is given (chunks of 16 MiB)."""

    def __init__(self) -> None:
        self.digest, self.size = hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def _store_array(folder: Path, name: str, arr: np.ndarray, prev: Any) -> dict[str, str]:
    """``arr`` as ``folder/name`` in .npy format, unless the session already holds these exact bytes (``prev``).

    An autosave runs every 30 s: the image never changes and the labels seldom do, and rewriting a CT volume's
    arrays (0.75 GB at 300 x 512 x 512) each time cost that much disk and, serialised in memory first, about
    twice that in RAM. The bytes are hashed as ``np.save`` streams them; a changed array is written straight
    to the temporary file."""
    arr = np.ascontiguousarray(arr)
    hasher = _Hasher()
    np.save(hasher, arr, allow_pickle=False)
    digest = hasher.digest.hexdigest()
    if _still_there(folder, prev, digest, hasher.size):
        return dict(prev)
    with atomic_paths([folder / name]) as (tmp,):
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    return {"path": name, "sha256": digest}


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} could not be read as a session ({exc}). Choose a folder saved by napari-samatch.") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{path} is not a napari-samatch session file. Choose a folder saved by napari-samatch.")
    return doc


def save_session(folder: str | os.PathLike, state: SessionState, checkpoint: str | os.PathLike | None = None) -> Path:
    """Write ``state`` into ``folder`` (created if needed); returns the path of ``session.json``.

    ``checkpoint`` (or ``state.checkpoint``) is copied into ``folder/models`` (unless the session already
    holds the same bytes); the session records its relative path and SHA-256.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"Cannot create the session folder {folder} ({exc.strerror}). Choose a folder you can write to.") from exc
    old = _read_json(folder / SESSION_FILE) if (folder / SESSION_FILE).is_file() else None
    gen = int(old.get("generation", 0)) + 1 if old else 1
    files: dict[str, dict[str, str]] = {}

    def put(key: str, name: str, data: bytes) -> None:
        atomic_write_bytes(folder / name, data)
        files[key] = {"path": name, "sha256": sha256_bytes(data)}

    previous = (old or {}).get("files") or {}
    for key in _ARRAYS:
        arr = getattr(state, key)
        if arr is not None:
            files[key] = _store_array(folder, f"{key}.{gen}.npy", np.asarray(arr), previous.get(key))
    if state.prompts:
        put("prompts", f"prompts.{gen}.npz", _npz_bytes(state.prompts))
    cohort = None
    if state.cohort is not None:  # paintings keyed by position: a volume's name need not be a valid npz key
        names = sorted(state.cohort_paintings)
        cohort = {**state.cohort, "painted": names}
        if names:
            put("cohort_paintings", f"cohort_paintings.{gen}.npz",
                _npz_bytes({f"p{k}": state.cohort_paintings[n] for k, n in enumerate(names)}))

    ckpt = Path(checkpoint) if checkpoint is not None else state.checkpoint
    if ckpt is not None:
        files["checkpoint"] = _store_checkpoint(folder, Path(ckpt), old, gen)

    doc = {
        "format": FORMAT, "generation": gen, "saved_at": time.time(), "name": state.name,
        "settings": state.settings, "labeled_slices": sorted(int(i) for i in state.labeled_slices),
        "accepted_slices": sorted(int(i) for i in state.accepted_slices),
        "corrected_slices": sorted(int(i) for i in state.corrected_slices),
        "source": str(state.source) if state.source else None,
        "spacing": [float(s) for s in state.spacing] if state.spacing is not None else None,
        "affine": np.asarray(state.affine, dtype=float).tolist() if state.affine is not None else None,
        "cohort": cohort, "files": files,
    }
    atomic_write_bytes(folder / SESSION_FILE, json.dumps(doc, indent=1).encode())
    _remove_stale(folder, old, files)
    return folder / SESSION_FILE


def _store_checkpoint(folder: Path, ckpt: Path, old: dict | None, gen: int) -> dict[str, str]:
    """Copy the checkpoint into ``models/`` unless the session already holds these exact bytes.

    The bytes are read once and hashed; the copy is made from those bytes, so a training run that
    replaces its checkpoint meanwhile cannot make the recorded hash disagree with the stored file.
    """
    try:
        data = ckpt.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"Checkpoint {ckpt} could not be read ({exc.strerror}), so it cannot be stored in "
                              "the session. Train a model (or stop a run) first.") from exc
    digest = sha256_bytes(data)
    prev = ((old or {}).get("files") or {}).get("checkpoint")
    if _still_there(folder, prev, digest):
        return dict(prev)
    rel = f"models/model.{gen}.pt"
    atomic_write_bytes(folder / rel, data)
    return {"path": rel, "sha256": digest}


def _still_there(folder: Path, prev: Any, digest: str, size: int | None = None) -> bool:
    """Whether the previous generation's entry ``prev`` holds these bytes (``digest``) and its file is still in
    the folder (with ``size`` bytes, when given), so the new generation can name it instead of writing it."""
    if not isinstance(prev, dict) or prev.get("sha256") != digest:
        return False
    try:
        kept = inside(folder, prev["path"])
        return kept.is_file() and (size is None or kept.stat().st_size == size)
    except (DataError, OSError, KeyError, TypeError):
        return False


def _remove_stale(folder: Path, old: dict | None, files: dict[str, dict[str, str]]) -> None:
    if not old:
        return
    keep = {f["path"] for f in files.values()}
    for entry in (old.get("files") or {}).values():
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not rel or rel in keep:
            continue
        try:
            inside(folder, rel).unlink(missing_ok=True)
        except (DataError, OSError):
            pass  # never fail a save because an old file could not be removed


# ----------------------------------------------------------------------------------- load
def load_session(folder: str | os.PathLike, verify: bool = True) -> SessionState:
    """Read a session folder; every file is checked against its recorded SHA-256 when ``verify``."""
    folder = Path(folder)
    if folder.name == SESSION_FILE:
        folder = folder.parent
    path = folder / SESSION_FILE
    if not path.is_file():
        raise DataError(f"{folder} holds no {SESSION_FILE}. Choose a folder saved by napari-samatch.")
    doc = _read_json(path)
    files = doc.get("files") or {}

    def resolve(key: str) -> Path | None:
        entry = files.get(key)
        if not entry:
            return None
        target = inside(folder, entry["path"])
        if not target.is_file():
            raise DataError(f"The session's {key} file {entry['path']} is missing. Restore it, or start a new session.")
        if verify and entry.get("sha256") and sha256_file(target) != entry["sha256"]:
            err = CheckpointError if key == "checkpoint" else DataError
            raise err(f"The session's {key} file {entry['path']} does not match its recorded hash: it was changed "
                      "or is truncated. Restore it from a backup, or start a new session.")
        return target

    state = SessionState(
        name=str(doc.get("name") or "session"), settings=dict(doc.get("settings") or {}),
        labeled_slices=[int(i) for i in doc.get("labeled_slices") or []],
        accepted_slices=[int(i) for i in doc.get("accepted_slices") or []],
        corrected_slices=[int(i) for i in doc.get("corrected_slices") or []],
        source=doc.get("source"), saved_at=float(doc.get("saved_at") or 0.0),
        spacing=tuple(doc["spacing"]) if doc.get("spacing") else None,
        affine=np.asarray(doc["affine"], dtype=float) if doc.get("affine") else None,
    )
    for key in _ARRAYS:
        target = resolve(key)
        if target is not None:
            setattr(state, key, _load_npy(target))
    target = resolve("prompts")
    if target is not None:
        with np.load(target, allow_pickle=False) as npz:
            state.prompts = {k: npz[k] for k in npz.files}
    if isinstance(doc.get("cohort"), dict):
        state.cohort = dict(doc["cohort"])
        target = resolve("cohort_paintings")
        names = [str(n) for n in state.cohort.get("painted") or []]
        if names and target is None:
            raise DataError("The session names cohort paintings but holds no file of them. Restore the session "
                            "folder from a backup.")
        if target is not None:
            try:
                with np.load(target, allow_pickle=False) as npz:
                    state.cohort_paintings = {n: npz[f"p{k}"] for k, n in enumerate(names)}
            except (OSError, ValueError, KeyError) as exc:
                raise DataError(f"The cohort paintings in {target.name} could not be read ({exc}). Restore the "
                                "session folder from a backup.") from exc
    ckpt = resolve("checkpoint")
    if ckpt is not None:
        state.checkpoint, state.checkpoint_sha256 = ckpt, files["checkpoint"].get("sha256")
    return state


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path.name} in the session could not be read ({exc}). Restore it from a backup.") from exc


def has_session(folder: str | os.PathLike) -> bool:
    return (Path(folder) / SESSION_FILE).is_file()


__all__ = ["SessionState", "save_session", "load_session", "default_session_dir", "samatch_home", "inside",
           "has_session", "safe_name"]
