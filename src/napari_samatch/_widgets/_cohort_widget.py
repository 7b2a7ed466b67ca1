"""The Cohort dock: a folder of volumes (and of label files), one shown at a time to paint, one model for all.

The dock only shows and delegates: the cohort (members, shapes, labeled counts, the volumes painted here) is a
core ``CohortState`` held by the viewer's Controller; while it is open, the Train dock's Start trains one model
on every volume (``Controller.start``); "Predict all and export" writes one mask per volume in a worker thread
(``core/match/cohort_masks.py``, as ``napari-samatch predict --images``; ``_cohort_export.py``). The folder form
(and the box declaring the label files complete, as ``train --labels-complete``) is ``_cohort_form.py``.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.data.cohort_state import CohortState
from ..core.device import autocast
from ..core.engine.cohort_review import predict_with_confidence
from ..core.errors import SamatchError
from ._cohort_export import CohortExport
from ._cohort_form import CohortForm
from ._cohort_layers import cohort_layers, contrast_of, show_member_image, show_member_labels, show_member_prediction
from ._cohort_review import CohortReviewPanel
from ._controller import get_controller
from ._notify import notify_error
from ._runner import failure_message
from ._tables import row_table

COLUMNS = ("Volume", "Shape", "Labeled slices")
# Between the steps of showing a member: a call queued with 0 ms runs before Qt's timers and redraws, so the steps
# ran back to back (a 60-100 ms hold in the heartbeat test); one frame's wait lets the viewer and the user in.
STEP_GAP_MS = 16
NO_LABELS = ("'Label files are complete' needs a Labels folder; choose the folder of label files, or untick the "
             "box.")


class CohortWidget(CohortExport, QWidget):
    """Open a cohort, see its volumes, click one to paint it, predict and export every volume."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.ctl = get_controller(napari_viewer)
        self.export_worker: Any = None
        self.written: list[Path] = []  # the masks of the last export
        self.loading: str | None = None  # the member being read and shown, until it is (tests wait on it)
        self._show_token = 0  # only the latest request to show a member is shown
        self._image_of = 0    # the request whose image the image layer shows
        self.switch_ms: deque[float] = deque(maxlen=1000)  # main-thread ms of each step of showing a volume (tests)
        self.alive = {"yes": True}  # False once the viewer closed: a volume read meanwhile is dropped
        self.destroyed.connect(lambda *_, a=self.alive: a.update(yes=False))
        lay = QVBoxLayout(self)

        self.form = CohortForm(self)
        lay.addWidget(self.form)
        f = self.form
        self.images_edit, self.labels_edit, self.complete_box = f.images_edit, f.labels_edit, f.complete_box
        self.open_btn, self.close_btn = f.open_btn, f.close_btn

        self.table = row_table(COLUMNS, "Click a volume to show it with its labels and paint a few of its slices.")
        lay.addWidget(self.table, 1)
        self.status = QLabel()
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addWidget(QLabel("Slices of the whole cohort the model is least sure of:"))
        self.review = CohortReviewPanel(self)
        lay.addWidget(self.review, 1)
        self.export_btn = QPushButton("Predict all and export...")
        self.export_btn.setToolTip("Segment every volume with the current model; one mask per volume into a folder.")
        lay.addWidget(self.export_btn)

        self.open_btn.clicked.connect(self._open_clicked)
        self.close_btn.clicked.connect(self.close_cohort)
        self.complete_box.toggled.connect(self.set_labels_complete)
        self.table.itemSelectionChanged.connect(self._row_chosen)
        self.export_btn.clicked.connect(self._export_clicked)
        self.ctl.labeled_changed.connect(self._on_labeled)
        self.ctl.cohort_changed.connect(self._on_cohort_changed)
        self._fill_table()

    # ------------------------------------------------------------------ opening
    def _open_clicked(self) -> None:
        if not self.images_edit.text().strip():
            self.form.browse(self.images_edit, "images")
        images, labels, complete = self.form.folders()
        if images:
            self.open_cohort(images, labels, labels_complete=complete)

    def open_cohort(self, images: str | Path, labels: str | Path | None = None, labels_complete: bool = False) -> bool:
        """Open a cohort (replacing one already open); a bad folder is one notification. True when opened.
        ``labels_complete``: the label files label every slice (``CohortState.labels_complete``)."""
        if self.ctl.job is not None:
            show_warning("A run is going; open the cohort when it ends (or stop it).")
            return False
        if labels_complete and labels is None:
            notify_error(NO_LABELS)
            return False
        try:
            state = CohortState.open(images, labels, axis=self.ctl.axis, labels_complete=labels_complete)
            rows = state.rows()  # headers and label files: a bad file is a sentence now, not at a click
        except SamatchError as exc:
            notify_error(str(exc))
            return False
        self._remove_shown()
        self.ctl.cohort, self.ctl.cohort_shown = state, None
        self.ctl.sessions.image_changed()  # the cohort's own session folder
        self._fill_table(rows)
        return True

    def set_labels_complete(self, on: bool) -> bool:
        """The box, applied to the open cohort at once (no cohort: read at Open): its counts, the review list and
        the next run follow. Refused without a Labels folder (one notification, the box unticked). True if applied."""
        state = self.ctl.cohort
        if state is None or bool(on) == state.labels_complete:
            self.form.set_complete(on)
            return state is not None
        if on and state.labels is None:
            notify_error(NO_LABELS)
            self.form.set_complete(False)
            return False
        try:
            self.ctl.keep_cohort_painting()  # strokes on the shown member decide whether it is a painting
            state.set_labels_complete(on)
            counts = [len(state.labeled(name)) for name in state.names()]
        except SamatchError as exc:
            notify_error(str(exc))
            self.form.set_complete(state.labels_complete)
            return False
        self.form.set_complete(on)
        for r, n in enumerate(counts):
            self.table.item(r, 2).setText(str(n))
        self.review.relabel()
        self.ctl.sessions.mark_dirty("cohort")
        self._show_status()
        return True

    def _fill_table(self, rows: list | None = None) -> None:
        """The table, folders and status of the controller's cohort (none: empty)."""
        state, self._show_token = self.ctl.cohort, self._show_token + 1
        self.loading = None
        self.review.reset()
        rows = rows if rows is not None else (state.rows() if state is not None else [])
        if state is not None:
            self.form.show_cohort(state)
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate((row.name, " x ".join(map(str, row.shape)), str(row.labeled))):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.blockSignals(False)
        self._show_status()

    def _on_cohort_changed(self, show: str | None) -> None:
        """A cohort put in place elsewhere (a reopened session): show it, and the member it showed."""
        for ly in self._shown_layers():
            self.viewer.layers.remove(ly)
        try:
            self._fill_table()
        except SamatchError as exc:
            notify_error(str(exc))
            return
        if show and self.ctl.cohort is not None and show in self.ctl.cohort.names():
            self.show_member(show)

    def close_cohort(self) -> None:
        """Forget the cohort (its paintings too); Start trains on the chosen layers again."""
        self._remove_shown()
        self.ctl.cohort, self.ctl.cohort_shown = None, None
        self.ctl.sessions.image_changed()
        self._fill_table()

    # ------------------------------------------------------------------ showing a member
    def _row_chosen(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows and self.ctl.cohort is not None:
            self.show_member(self.ctl.cohort.members[rows[0].row()].name)

    def show_member(self, name: str, at: int | None = None, prediction: bool = False) -> bool:
        """Show a member as an image and a labels layer (its painting, label file, or empty), chosen for painting,
        at slice ``at``; ``prediction`` adds the current model's prediction as an editable layer (the review list).

        The volume is read (and predicted) in a worker thread, so the viewer never waits on a file; the member shown
        before keeps its painting in the cohort state. True when the member is shown or on its way."""
        ctl, state = self.ctl, self.ctl.cohort
        if state is None:
            return False
        if name == ctl.cohort_shown and (not prediction or self.prediction_layer() is not None):
            self._go_to(at)
            return True
        engine = ctl.current_engine() if prediction else None
        if prediction and engine is None:
            notify_error("There is no model yet: train one (Start in the Train dock) or load one.")
            return False
        try:
            ctl.keep_cohort_painting()
        except SamatchError as exc:
            notify_error(str(exc))
            return False
        self._show_token += 1
        token = self._show_token

        def work():  # worker thread: the file read and the prediction
            vol = state.load(name)
            labels = None
            if engine is not None:
                labels = predict_with_confidence(engine.unet, vol.image, engine.config.size, state.axis,
                                                 device=engine.device, lock=engine.lock,
                                                 amp=autocast(engine.device, engine.config.amp))[0]
            return vol, labels, contrast_of(vol.image)

        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(lambda out: self._member_loaded(token, name, at, *out))
        worker.errored.connect(lambda exc: self._member_failed(token, failure_message(exc, f"Reading {name}")))
        self.loading = name
        self.status.setText(f"Reading {name}...")
        worker.start()
        return True

    def _member_failed(self, token: int, error: str) -> None:
        if self.alive["yes"] and token == self._show_token:
            self.loading = None
            notify_error(error)
            self._show_status()

    def _member_loaded(self, token: int, name: str, at: int | None, vol, prediction, contrast) -> None:
        """Show the read member in four turns of the event loop (image; labels; prediction; the rest), a frame
        apart: each layer's new data redraws it and re-checks the viewer's dims (20-50 ms each while a run trains
        on this project's 2-core machine), so short holds of the main thread instead of one long one."""
        ctl = self.ctl
        if not self.alive["yes"] or token != self._show_token or ctl.cohort is None or name not in ctl.cohort.names():
            return  # another member was asked for since, or the cohort closed
        self._image_of = token
        self._timed(show_member_image, self.viewer, name, vol, contrast)
        QTimer.singleShot(STEP_GAP_MS, lambda: self._timed(self._labels_loaded, token, name, at, vol, prediction))

    def _timed(self, fn, *args) -> None:
        t0 = time.perf_counter()
        try:
            fn(*args)
        finally:
            self.switch_ms.append((time.perf_counter() - t0) * 1e3)

    def _labels_loaded(self, token: int, name: str, at: int | None, vol, prediction) -> None:
        ctl = self.ctl
        if not self.alive["yes"] or token != self._image_of or ctl.cohort is None:
            return  # the image layer shows a member asked for since: its own labels follow
        try:
            ctl.keep_cohort_painting()  # strokes made while the new member was read
        except SamatchError as exc:
            notify_error(str(exc))
        self._update_row(ctl.cohort_shown)
        ctl.cohort_shown = None  # no painting is kept while the labels layer changes hands
        lab = show_member_labels(self.viewer, name, vol)
        QTimer.singleShot(STEP_GAP_MS, lambda: self._timed(self._prediction_loaded, token, name, at, lab, prediction))

    def _prediction_loaded(self, token: int, name: str, at: int | None, lab, prediction) -> None:
        if not self.alive["yes"] or token != self._image_of or self.ctl.cohort is None:
            return
        pred = show_member_prediction(self.viewer, name, lab.scale, prediction)
        QTimer.singleShot(STEP_GAP_MS, lambda: self._timed(self._member_shown, token, name, at, lab, pred))

    def _member_shown(self, token: int, name: str, at: int | None, lab, pred) -> None:
        ctl = self.ctl
        if not self.alive["yes"] or token != self._image_of or ctl.cohort is None:
            return
        ctl.cohort_shown = name
        if token == self._show_token:
            self.loading = None
        ctl.set_image_layer(cohort_layers(self.viewer)["image"])
        ctl.set_labels_layer(lab)
        self.viewer.layers.selection.active = pred if pred is not None else lab
        self._select_row(name)
        self._go_to(at)
        self._show_status()

    def _go_to(self, at: int | None) -> None:
        if at is not None:
            self.ctl.go_to_slice(int(at))

    def prediction_layer(self):
        """The shown member's prediction layer (review list), or None."""
        return cohort_layers(self.viewer).get("prediction")

    def _shown_layers(self) -> list:
        return [ly for ly in self.viewer.layers if ly.metadata.get("cohort_member") is not None]

    def _remove_shown(self) -> None:
        if self.ctl.cohort is not None:
            try:
                self.ctl.keep_cohort_painting()
            except SamatchError as exc:
                notify_error(str(exc))
        for ly in self._shown_layers():
            self.viewer.layers.remove(ly)

    def _select_row(self, name: str) -> None:
        names = self.ctl.cohort.names()
        self.table.blockSignals(True)
        self.table.selectRow(names.index(name))
        self.table.blockSignals(False)

    def labeled_count_changed(self, name: str) -> None:
        """A member's labeled slices changed outside its labels layer (an accepted slice)."""
        self._update_row(name)

    def _update_row(self, name: str | None, labeled: int | None = None) -> None:
        state = self.ctl.cohort
        if state is None or name is None or name not in state.names():
            return
        n = len(state.labeled(name)) if labeled is None else labeled
        self.table.item(state.names().index(name), 2).setText(str(n))

    def _on_labeled(self) -> None:
        ly, state, name = self.ctl.labels_layer, self.ctl.cohort, self.ctl.cohort_shown
        if state is None or ly is None or ly.metadata.get("cohort_member") != name:
            return
        if state.labels_complete and state.member(name).labels is not None:
            self._update_row(name)  # a complete label file, painted or not: every slice is labeled
        else:
            self._update_row(name, len(self.ctl.labeled_slices()))

    def _show_status(self) -> None:
        state = self.ctl.cohort
        if state is None:
            self.status.setText("Open a folder of volumes to train one model on all of them.")
            return
        shown = f" Showing {self.ctl.cohort_shown}." if self.ctl.cohort_shown else " Click a volume to paint it."
        files = "every slice of a label file" if state.labels_complete else "painted slices of label files"
        self.status.setText(f"{len(state.members)} volumes. Start in the Train dock trains one model on all of them "
                            f"(slices painted here, {files}).{shown}")


__all__ = ["CohortWidget"]
