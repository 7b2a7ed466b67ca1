"""The Cohort dock's review list: the slices of the whole cohort least likely to be right, and accepting them.

The scores come from the core (``core/engine/cohort_review.py``), one volume at a time in a worker thread, so
the list grows while the main thread stays free (and while a run trains: the running model answers). A click
shows that volume at that slice with the model's prediction as an editable labels layer; Accept copies that
slice of the prediction (corrected or not) into the volume's painting (``CohortState.accept``), so the next
round trains with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.engine.cohort_review import CohortReview, SliceScore, VolumeReview, review_cohort
from ..core.errors import SamatchError
from ._layers import slice_view
from ._notify import notify_error
from ._runner import failure_message
from ._tables import row_table

if TYPE_CHECKING:
    from ._cohort_widget import CohortWidget

COLUMNS = ("Volume", "Slice", "Confidence")
MAX_ROWS = 200  # the least confident; a table of every slice of a large cohort would only be scrolled past


class CohortReviewPanel(QWidget):
    """The list across the cohort (volume, slice, confidence; ascending), Find and Accept."""

    def __init__(self, dock: "CohortWidget") -> None:
        super().__init__()
        self.dock, self.ctl = dock, dock.ctl
        self.review = CohortReview()
        self.worker: Any = None
        # the viewer may close while a volume is scored: no slot may then touch the deleted widgets
        self.alive = {"yes": True, "worker": None}
        self.destroyed.connect(lambda *_, a=self.alive: (a.update(yes=False), a["worker"] and a["worker"].quit()))
        self.shown_rows: list[SliceScore] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.find_btn = QPushButton("Find doubtful slices")
        self.find_btn.setToolTip("Score every slice of every volume with the current model (also while it trains); "
                                 "the least confident first.")
        self.accept_btn = QPushButton("Accept slice")
        self.accept_btn.setToolTip("Make the chosen slice of its prediction (after your corrections) a labeled "
                                   "slice of that volume; Next round in the Train dock trains with it.")
        row.addWidget(self.find_btn)
        row.addWidget(self.accept_btn)
        lay.addLayout(row)
        self.table = row_table(COLUMNS, "Click a slice to see it with the model's prediction; correct it, then Accept.")
        lay.addWidget(self.table, 1)
        self.status = QLabel("Train a model, then find the slices of the cohort it is least sure of.")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.find_btn.clicked.connect(lambda: self.find())
        self.accept_btn.clicked.connect(lambda: self.accept_selected())
        self.table.itemSelectionChanged.connect(self._row_chosen)
        self.ctl.engine_changed.connect(self._on_engine)

    # ------------------------------------------------------------------ scoring
    def find(self) -> bool:
        """Score every member again with the current model, volume by volume in a worker. True when started."""
        ctl, state = self.ctl, self.ctl.cohort
        engine = ctl.current_engine()
        if state is None:
            notify_error("Open a cohort first (a folder of volumes), then train a model on it.")
            return False
        if engine is None:
            notify_error("There is no model yet: train one (Start in the Train dock) or load one.")
            return False
        self.stop()
        self.review.clear()
        self._fill()
        worker = create_worker(review_cohort, engine, state, _start_thread=False)
        worker.yielded.connect(self._volume_scored)
        worker.returned.connect(lambda _=None: self._finished(worker, None))
        worker.errored.connect(lambda exc: self._finished(worker, failure_message(exc, "Scoring the cohort")))
        self.worker = self.alive["worker"] = worker
        self.status.setText(f"Scoring {len(state.members)} volumes with the current model...")
        worker.start()
        return True

    def stop(self) -> None:
        """Stop scoring after the current volume (a new model, another cohort)."""
        if self.worker is not None:
            self.worker.quit()
            self.worker = self.alive["worker"] = None

    def reset(self) -> None:
        """Forget the list (the cohort was closed or replaced)."""
        self.stop()
        self.review.clear()
        self._fill()
        self.status.setText("Train a model, then find the slices of the cohort it is least sure of.")

    def relabel(self) -> None:
        """The cohort's rule for labeled slices changed (the complete-labels box): leave out its labeled slices."""
        state = self.ctl.cohort
        if state is not None:
            self.review.relabel(state.labeled)
            self._fill()

    def _on_engine(self) -> None:
        # a cohort run (or a loaded model) ended: its answers are new, so is the list
        if self.ctl.cohort is not None and self.ctl.job is None:
            self.find()

    def _volume_scored(self, vol) -> None:
        state = self.ctl.cohort
        if not self.alive["yes"] or state is None or vol.member not in state.names():
            return
        # slices painted or accepted since the worker read them are the user's now
        self.review.add(VolumeReview(vol.member, vol.scores, sorted(set(vol.labeled) | set(state.labeled(vol.member)))))
        self._fill()
        n, total = len(self.review.members()), len(state.members)
        self.status.setText(f"{n} of {total} volumes scored; the least confident slices first.")

    def _finished(self, worker, error: str | None) -> None:
        if not self.alive["yes"] or worker is not self.worker:
            return  # a stopped scoring's last word, or the viewer closed
        self.worker = self.alive["worker"] = None
        if error:
            notify_error(error)
            self.status.setText(f"Scoring stopped: {error}")
        elif self.shown_rows:
            self.status.setText(f"{len(self.review.members())} volumes scored. Click a slice to see it with the "
                                "model's prediction; correct it if needed, then Accept.")

    def _fill(self) -> None:
        """Show the rows, keeping the chosen one chosen."""
        chosen = self.selected()
        self.shown_rows = self.review.rows(limit=MAX_ROWS)
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.shown_rows))
        for r, row in enumerate(self.shown_rows):
            for c, text in enumerate((row.member, str(row.index), f"{row.confidence:.3f}")):
                self.table.setItem(r, c, QTableWidgetItem(text))
        keys = [(row.member, row.index) for row in self.shown_rows]
        if chosen is not None and (chosen.member, chosen.index) in keys:
            self.table.selectRow(keys.index((chosen.member, chosen.index)))
        else:
            self.table.clearSelection()
        self.table.blockSignals(False)

    # ------------------------------------------------------------------ showing and accepting
    def selected(self) -> SliceScore | None:
        rows = self.table.selectionModel().selectedRows()
        return self.shown_rows[rows[0].row()] if rows and rows[0].row() < len(self.shown_rows) else None

    def _row_chosen(self) -> None:
        row = self.selected()
        if row is not None:
            self.dock.show_member(row.member, at=row.index, prediction=True)

    def accept_selected(self) -> bool:
        """Accept the chosen row: its slice of the shown prediction layer becomes labeled in the painting."""
        row, ctl, state = self.selected(), self.ctl, self.ctl.cohort
        pred = self.dock.prediction_layer()
        if row is None or state is None:
            show_warning("Choose a slice in the list first.")
            return False
        if pred is None or ctl.cohort_shown != row.member or self.dock.loading is not None:
            show_warning(f"Wait until {row.member} is shown with its prediction, then accept.")
            return False
        try:
            ctl.keep_cohort_painting()  # the painting includes the latest strokes before the slice joins it
            reviewed = np.array(slice_view(np.asarray(pred.data), row.index, state.axis), copy=True)
            lab = ctl.labels_layer if ctl.labels_layer is not None and \
                ctl.labels_layer.metadata.get("cohort_member") == row.member else None
            # the shown labels are the member's labels: the painting starts from them (no label file read here)
            labeled = state.accept(row.member, row.index, reviewed,
                                   base=np.asarray(lab.data) if lab is not None else None)
        except SamatchError as exc:
            notify_error(str(exc))
            return False
        if lab is not None:
            slice_view(lab.data, row.index, state.axis)[...] = reviewed  # the layer shows what the painting holds
            lab.refresh()
            ctl.refresh_labeled()
        if labeled:
            self.review.drop(row.member, row.index)
            self._fill()
        self.dock.labeled_count_changed(row.member)
        ctl.sessions.mark_dirty("cohort")
        if labeled:
            show_info(f"Slice {row.index} of {row.member} is labeled now; Next round in the Train dock trains with it.")
        else:
            show_warning(f"Slice {row.index} of {row.member} holds no structure, so it stays unlabeled "
                         "(paint its structures on the prediction layer, then accept again).")
        return labeled
