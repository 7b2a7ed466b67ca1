"""Sessions, autosave, mask and model export for the docks (the file formats live in ``core.data.session``).

Nothing the user painted or corrected is lost: the labels and the review state are autosaved into the
session folder every ``AUTOSAVE_MS`` when something changed, after each accept, when a run starts and
when it ends. The arrays are copied on the main thread (fast) and written by a worker (slow).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info
from qtpy.QtCore import QObject, QTimer, Signal

from ..core.checkpoint import sha256_bytes
from ..core.data.session import SessionState, default_session_dir, load_session, save_session
from ..core.data.volume import Volume
from ..core.engine.rounds import review_engine
from ..core.errors import DataError, SamatchError
from ._cohort_session import cohort_snapshot, open_cohort_session
from ._layers import PromptTable
from ._notify import notify_error
from ._runner import failure_message

if TYPE_CHECKING:
    from ._controller import Controller

log = logging.getLogger(__name__)
AUTOSAVE_MS = 30_000   # catch-all period
PAINT_SAVE_MS = 3_000  # after the last paint stroke: at most a few seconds of painting can be lost


class SessionManager(QObject):
    """Where the session lives, what changed since the last save, and saving/opening it."""

    saved = Signal(str)  # folder, after a successful save (main thread)

    def __init__(self, controller: "Controller") -> None:
        super().__init__()
        self.ctl = controller
        self._folder: Path | None = None
        self.user_folder = False           # the user chose the folder (Save as / Open): keep it
        self.dirty: set[str] = set()
        self.checkpoint_path: Path | None = None
        self.settings: dict[str, Any] = {}  # the Train dock's settings (kept current by the dock)
        self._saving = False
        self._write_lock = threading.Lock()  # a blocking save and an autosave worker never interleave
        self._again = False
        self._labels_hash: str | None = None
        self.last_saved = 0.0
        self.last_error: str | None = None
        self.timer = QTimer(self)
        self.timer.setInterval(AUTOSAVE_MS)
        self.timer.timeout.connect(self.autosave)
        self.timer.start()
        self.soon = QTimer(self)
        self.soon.setSingleShot(True)
        self.soon.setInterval(PAINT_SAVE_MS)
        self.soon.timeout.connect(self.autosave)

    # ------------------------------------------------------------------ folder
    @property
    def folder(self) -> Path:
        if self._folder is None and self.ctl.cohort is not None:  # one folder for the cohort, not per member
            self._folder = default_session_dir(f"cohort_{self.ctl.cohort.images.name}")
        if self._folder is None:
            img = self.ctl.image_layer
            name = img.name if img is not None else "untitled"
            src = (img.metadata.get("source") if img is not None else None) or None
            self._folder = default_session_dir(name, src)
        return self._folder

    def set_folder(self, folder: str | Path) -> None:
        if self._folder is None or Path(folder) != self._folder:
            self._labels_hash = None
        self._folder, self.user_folder = Path(folder), True

    def image_changed(self) -> None:
        if not self.user_folder:
            self._folder, self._labels_hash = None, None

    def mark_dirty(self, what: str, soon: bool = False) -> None:
        """Note a change; ``soon`` saves a few seconds later (after painting) instead of at the next period."""
        self.dirty.add(what)
        if soon:
            self.soon.start()

    # ------------------------------------------------------------------ save
    def snapshot(self) -> SessionState:
        """Copies of everything to save (main thread; arrays are copied so editing may go on)."""
        ctl, rev = self.ctl, self.ctl.review
        if ctl.cohort is not None:
            return cohort_snapshot(ctl, self.settings)
        img = ctl.image_layer
        settings = {"axis": ctl.axis, "class_names": list(ctl.class_names), "val_slices": ctl.val_slices,
                    "image_layer": img.name if img is not None else None,
                    "labels_layer": ctl.labels_layer.name if ctl.labels_layer is not None else None,
                    "scores": {str(k): v for k, v in rev.scores.items()},
                    "prompt_edited": sorted(rev.prompt_edited), "train": dict(self.settings)}
        vol_src = img.metadata.get("source") if img is not None else None
        state = SessionState(
            name=img.name if img is not None else "session", settings=settings,
            labels=np.array(ctl.labels_layer.data, copy=True) if ctl.labels_layer is not None else None,
            labeled_slices=ctl.labeled_slices(), accepted_slices=sorted(rev.accepted),
            corrected_slices=sorted(rev.corrected), source=vol_src,
            spacing=(img.metadata.get("spacing") or tuple(img.scale)) if img is not None else None,
            affine=img.metadata.get("affine") if img is not None else None)
        if "pseudo" in rev.layers:
            state.pseudo_labels = np.array(rev.layers["pseudo"].data, copy=True)
            state.confidence = np.array(rev.layers["confidence"].data, copy=True)
            state.prompts = rev.table.to_dict()
        if img is not None and not (vol_src and Path(vol_src).is_file()):
            state.image = np.array(img.data, copy=True)  # no file to reopen it from (e.g. the sample)
        return state

    def autosave(self, force: bool = False) -> None:
        if self.ctl.viewer is None:  # the viewer is gone: nothing more to watch
            self.timer.stop()
            return
        if (self.ctl.labels_layer is None and self.ctl.cohort is None) or (not self.dirty and not force):
            return
        self.save()

    def save(self, folder: str | Path | None = None, block: bool = False) -> None:
        """Save into ``folder`` (default: the current session folder) in a worker; ``block`` waits."""
        if folder is not None:
            self.set_folder(folder)
        if self._saving and not block:
            self._again = True
            return
        try:
            state = self.snapshot()
        except SamatchError as exc:
            self.last_error = str(exc)
            return
        target, ckpt = self.folder, self.checkpoint_path
        # set_data events (undo, redraws) mark the labels dirty without knowing; the worker compares hashes
        skip_if = self._labels_hash if (self.dirty <= {"labels"} and not force_write(folder, block)) else None
        self.dirty.clear()
        if block:  # an autosave may be in flight: _write serialises on the lock, and it keeps its flag
            in_flight = self._saving
            self._done(self._write(target, state, ckpt, skip_if))
            self._saving = in_flight
            return
        self._saving = True
        # The snapshot travels in a dict the worker empties: finished workers outlive their run (the
        # worker object keeps its arguments), and each snapshot holds copies of the labels, pseudo-labels,
        # confidence and maybe the image - 0.75 GB for a 300 x 512 x 512 volume, kept per autosave.
        job = {"state": state}
        worker = create_worker(self._write_job, target, job, ckpt, skip_if, _start_thread=False)
        worker.returned.connect(self._done)
        worker.start()

    def _write_job(self, folder: Path, job: dict, ckpt: Path | None, skip_if: str | None) -> dict:
        return self._write(folder, job.pop("state"), ckpt, skip_if)

    def _write(self, folder: Path, state: SessionState, ckpt: Path | None, skip_if: str | None) -> dict:
        """Worker thread: write the session, unless only the labels were flagged and they are unchanged."""
        with self._write_lock:
            return self._write_locked(folder, state, ckpt, skip_if)

    def _write_locked(self, folder: Path, state: SessionState, ckpt: Path | None, skip_if: str | None) -> dict:
        try:
            labels_hash = sha256_bytes(state.labels.tobytes()) if state.labels is not None else None
            if skip_if is not None and labels_hash == skip_if and (Path(folder) / "session.json").is_file():
                return {"folder": str(folder), "error": None, "labels_hash": labels_hash, "skipped": True}
            save_session(folder, state, checkpoint=ckpt if ckpt is not None and Path(ckpt).is_file() else None)
            return {"folder": str(folder), "error": None, "labels_hash": labels_hash}
        except Exception as exc:  # noqa: BLE001 - a failed autosave must be visible, never fatal
            return {"folder": str(folder), "error": failure_message(exc, "Saving the session")}

    def _done(self, result: dict) -> None:
        self._saving = False
        if result["error"]:
            self.last_error = result["error"]
            self.dirty.add("retry")
            notify_error(result["error"])
        else:
            self.last_error = None
            self._labels_hash = result.get("labels_hash")
            if not result.get("skipped"):
                self.last_saved = time.time()
                self.saved.emit(result["folder"])
        if self._again:
            self._again = False
            self.save()

    # ------------------------------------------------------------------ open
    def open(self, folder: str | Path) -> SessionState:
        """Reopen a session: image, labels, review layers, settings, then the model (in a worker)."""
        state = load_session(folder)
        if state.cohort is not None:
            return open_cohort_session(self, folder, state)
        ctl, v = self.ctl, self.ctl.viewer
        st = state.settings
        shape = state.labels.shape if state.labels is not None else None
        img = next((ly for ly in ctl.image_layers() if ly.name == st.get("image_layer")
                    and (shape is None or ctl_shape(ly) == shape)), None)
        if img is None and state.image is not None:
            img = v.add_image(state.image, name=st.get("image_layer") or state.name, colormap="gray",
                              scale=state.spacing, metadata={"spacing": state.spacing, "affine": state.affine,
                                                             "source": state.source,
                                                             "class_names": st.get("class_names")})
        if img is None and state.source and Path(state.source).is_file():
            from ..core.data.io import read_volume

            vol = read_volume(state.source)
            img = v.add_image(vol.image, name=vol.name, colormap="gray", scale=vol.spacing,
                              metadata={"spacing": vol.spacing, "affine": vol.affine, "source": vol.source})
        if img is None:
            raise DataError(f"The image of this session ({state.source or state.name}) is not open and not in the "
                            "session. Open the image first, then open the session again.")
        ctl.axis = int(st.get("axis", 0))
        ctl.class_names = [str(n) for n in st.get("class_names") or []]
        ctl.val_slices = int(st.get("val_slices", 0))
        ctl.set_image_layer(img, emit=False)
        labels = next((ly for ly in ctl.labels_layers() if ly.name == st.get("labels_layer")
                       and ly.data.shape == ctl.image_shape()), None)
        if labels is None:
            labels = v.add_labels(np.zeros(ctl.image_shape(), np.uint8), name=st.get("labels_layer") or "labels",
                                  scale=tuple(img.scale), translate=tuple(img.translate))
        if state.labels is not None:
            labels.data = state.labels
        ctl.set_labels_layer(labels, emit=False)
        self._restore_review(state)
        self.settings = dict(st.get("train") or {})
        self.set_folder(folder)
        self.checkpoint_path = state.checkpoint
        ctl.selection_changed.emit()
        ctl.refresh_labeled()
        if state.checkpoint is not None:
            self.load_model(state.checkpoint, preview=False)
        show_info(f"Session reopened from {folder}.")
        return state

    def _restore_review(self, state: SessionState) -> None:
        rev = self.ctl.review
        if state.pseudo_labels is None:
            return
        rev.ensure_layers()
        rev._updating = True
        try:
            rev.layers["pseudo"].data = state.pseudo_labels
            rev.layers["confidence"].data = state.confidence if state.confidence is not None else \
                np.zeros(state.pseudo_labels.shape, np.float32)
            rev.table = PromptTable.from_dict(state.prompts) if state.prompts else PromptTable()
            rev.scores = {int(k): float(v) for k, v in (state.settings.get("scores") or {}).items()}
            rev.corrected, rev.accepted = set(state.corrected_slices), set(state.accepted_slices)
            rev.prompt_edited = set(int(i) for i in state.settings.get("prompt_edited") or [])
            rev._draw_prompts()
        finally:
            rev._updating = False
        self.ctl.review_changed.emit()

    # ------------------------------------------------------------------ models
    def load_model(self, path: str | Path, preview: bool = True, device: str | None = None) -> None:
        """Build an engine from a training checkpoint or an exported model on what the docks show (the
        volume, or the open cohort with its paintings), in a worker."""
        ctl = self.ctl
        device = device or self.settings.get("device") or "auto"
        snap = ctl.training_members()  # a cohort's label files are read in the worker

        def make_engine():
            return review_engine(Path(path), snap.members, snap.axis, snap.class_names, snap.paintings, device,
                                 labels_complete=snap.labels_complete)

        self.checkpoint_path = Path(path)
        ctl.launch(ctl.job_for(make_engine, None, run=False, final_preview=preview), 0)

    # ------------------------------------------------------------------ export
    def final_mask(self) -> np.ndarray:
        """Pseudo-labels everywhere, the user's own labels on every labeled slice."""
        ctl = self.ctl
        if ctl.labels_layer is None:
            raise DataError("Choose a labels layer in the Data dock first.")
        user = np.asarray(ctl.labels_layer.data)
        pseudo = ctl.review.layers.get("pseudo")
        out = np.array(pseudo.data if pseudo is not None else user, copy=True)
        from ._layers import slice_view

        for i in ctl.labeled_slices():
            slice_view(out, i, ctl.axis)[...] = slice_view(user, i, ctl.axis)
        return out

    def export_masks(self, path: str | Path, which: str = "final") -> list[Path]:
        """Write masks (``.nii.gz`` with the source affine, ``.tif``, ``.png`` / a folder): final,
        pseudo (the review layer) or user (the labels layer)."""
        from ..core.data.writers import write_mask

        ctl = self.ctl
        if which == "final":
            arr = self.final_mask()
        elif which == "pseudo":
            if "pseudo" not in ctl.review.layers:
                raise DataError("There are no pseudo-labels yet; train or load a model first.")
            arr = np.asarray(ctl.review.layers["pseudo"].data)
        else:
            arr = np.asarray(ctl.labels_layer.data)
        img = ctl.image_layer
        md = img.metadata if img is not None else {}
        spacing = md.get("spacing") or (tuple(img.scale) if img is not None else None)
        like = Volume(np.broadcast_to(np.float32(0), arr.shape), spacing=tuple(spacing) if spacing else None,
                      affine=np.asarray(md["affine"]) if md.get("affine") is not None else None,
                      name=img.name if img is not None else "mask",
                      source=md.get("source") or getattr(getattr(img, "source", None), "path", None),
                      metadata={k: md[k] for k in ("nifti_codes",) if k in md})
        return write_mask(path, arr, like=like)

    def export_model(self, path: str | Path) -> Path:
        from ..core.data.outputs import check_not_an_input
        from ..core.engine.export import export_model

        engine = self.ctl.engine
        if engine is None:
            raise DataError("There is no trained model to export yet. Train one first (Start).")
        img = self.ctl.image_layer
        source = (img.metadata.get("source") or getattr(getattr(img, "source", None), "path", None)) if img else None
        check_not_an_input([path], {"image": source}, "choose another file name for the model")
        with engine.lock:
            return export_model(engine, path)


def force_write(folder, block: bool) -> bool:
    """An explicit save (a chosen folder, or a blocking save) always writes."""
    return folder is not None or block


def ctl_shape(layer) -> tuple[int, ...]:
    shape = tuple(int(s) for s in layer.data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape
