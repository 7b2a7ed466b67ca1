"""The Review dock: prompts, slices sorted by confidence, accept, update pseudo-labels, export masks."""

from __future__ import annotations

from napari.utils.notifications import show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import SamatchError
from ._controller import get_controller
from ._notify import notify_error

MASK_SOURCES = [("final", "Pseudo-labels + your labels"), ("pseudo", "Pseudo-labels only"),
                ("user", "Your labels only")]


class _NumberItem(QTableWidgetItem):
    """Sorts by number, empty cells last."""

    def __lt__(self, other) -> bool:
        a, b = self.data(Qt.ItemDataRole.UserRole), other.data(Qt.ItemDataRole.UserRole)
        a = float("inf") if a is None else a
        b = float("inf") if b is None else b
        return a < b


class ReviewWidget(QWidget):
    """Look at prompts and pseudo-labels, correct them, accept slices, export masks."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.ctl = get_controller(napari_viewer)
        self.review = self.ctl.review
        lay = QVBoxLayout(self)

        box = QGroupBox("Prompts")
        form = QFormLayout(box)
        hint = QLabel("Move or resize a box, or add a point, in the 'SAM-Match boxes' / 'points' layers: "
                      "SAM re-runs for that slice at once. Paint on the pseudo-labels to correct them.")
        hint.setWordWrap(True)
        form.addRow(hint)
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("Class given to boxes and points you draw.")
        form.addRow("New prompts' class", self.class_combo)
        self.polarity_combo = QComboBox()
        self.polarity_combo.addItem("positive (inside)", 1)
        self.polarity_combo.addItem("negative (outside)", 0)
        form.addRow("New points", self.polarity_combo)
        row = QHBoxLayout()
        self.refine_btn = QPushButton("Re-run SAM on this slice")
        self.update_btn = QPushButton("Update pseudo-labels")
        self.update_btn.setToolTip("Predict every slice again with the current models.")
        row.addWidget(self.refine_btn)
        row.addWidget(self.update_btn)
        form.addRow(row)
        self.latency_label = QLabel("")
        form.addRow(self.latency_label)
        lay.addWidget(box)

        box = QGroupBox("Slices by confidence")
        v = QVBoxLayout(box)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Slice", "Confidence", "Status"])
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setToolTip("Click a header to sort; click a row to show the slice. Low confidence first: "
                              "those slices need your eyes.")
        self.table.setMinimumHeight(160)
        v.addWidget(self.table)
        self.show_conf = QCheckBox("Show the confidence layer")
        self._conf_watched = None  # the confidence layer whose visibility the checkbox follows
        v.addWidget(self.show_conf)
        row = QHBoxLayout()
        self.accept_btn = QPushButton("Accept this slice")
        self.accept_btn.setToolTip("Copy its pseudo-label (with your corrections) into your labels: it becomes "
                                   "labeled for the next round. Undo with Ctrl+Z on the labels layer.")
        self.accept_sel_btn = QPushButton("Accept selected")
        row.addWidget(self.accept_btn)
        row.addWidget(self.accept_sel_btn)
        v.addLayout(row)
        lay.addWidget(box)

        box = QGroupBox("Export masks")
        form = QFormLayout(box)
        self.source_combo = QComboBox()
        for key, label in MASK_SOURCES:
            self.source_combo.addItem(label, key)
        form.addRow("Mask", self.source_combo)
        self.export_btn = QPushButton("Export masks...")
        self.export_btn.setToolTip("NIfTI (.nii.gz, with the source image's affine), TIFF (.tif) or PNG slices.")
        form.addRow(self.export_btn)
        lay.addWidget(box)
        lay.addStretch(1)

        self.class_combo.currentIndexChanged.connect(self._prompt_kind)
        self.polarity_combo.currentIndexChanged.connect(self._prompt_kind)
        self.refine_btn.clicked.connect(lambda: self.review.refine_slice(self.ctl.current_slice()))
        self.update_btn.clicked.connect(self.ctl.update_previews)
        self.table.cellClicked.connect(self._row_clicked)
        self.show_conf.toggled.connect(self._toggle_conf)
        self.accept_btn.clicked.connect(lambda: self.review.accept([self.ctl.current_slice()]))
        self.accept_sel_btn.clicked.connect(self._accept_selected)
        self.export_btn.clicked.connect(self._export)
        self.ctl.review_changed.connect(self.refresh)
        self.ctl.labeled_changed.connect(self.refresh)
        self.ctl.selection_changed.connect(self._classes)
        self.review.refined.connect(self._show_latency)
        self._classes()
        self.refresh()

    # ------------------------------------------------------------------ view
    def _classes(self) -> None:
        names = self.ctl.effective_class_names()
        current = self.class_combo.currentIndex()
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        for c, name in enumerate(names[1:], start=1):
            self.class_combo.addItem(f"{c}: {name}", c)
        self.class_combo.setCurrentIndex(current if 0 <= current < self.class_combo.count() else 0)
        self.class_combo.blockSignals(False)
        self.refresh()

    def refresh(self) -> None:
        rows = self.review.slice_rows()
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for r, (i, score, status) in enumerate(rows):
            a = _NumberItem(str(i))
            a.setData(Qt.ItemDataRole.UserRole, i)
            b = _NumberItem("" if score is None else f"{score:.3f}")
            b.setData(Qt.ItemDataRole.UserRole, score)
            self.table.setItem(r, 0, a)
            self.table.setItem(r, 1, b)
            self.table.setItem(r, 2, QTableWidgetItem(status))
        self.table.setSortingEnabled(True)
        has = "pseudo" in self.review.layers
        self.accept_btn.setEnabled(has)
        self.accept_sel_btn.setEnabled(has)
        self.refine_btn.setEnabled(has)
        conf = self.review.layers.get("confidence")
        if conf is not None:
            if conf is not self._conf_watched:  # the layer list's eye icon must move the checkbox too
                conf.events.visible.connect(self._sync_conf)
                self._conf_watched = conf
            self._sync_conf()

    def _sync_conf(self, event=None) -> None:
        conf = self.review.layers.get("confidence")
        if conf is not None and self.show_conf.isChecked() != conf.visible:
            self.show_conf.blockSignals(True)
            self.show_conf.setChecked(conf.visible)
            self.show_conf.blockSignals(False)

    def _show_latency(self, index: int, ms: float) -> None:
        self.latency_label.setText(f"Slice {index} re-segmented in {ms:.0f} ms.")

    # ------------------------------------------------------------------ actions
    def _prompt_kind(self) -> None:
        c = self.class_combo.currentData()
        if c is not None:
            self.review.set_new_prompt_kind(int(c), int(self.polarity_combo.currentData()))

    def _row_clicked(self, row: int, col: int) -> None:
        item = self.table.item(row, 0)
        if item is not None:
            self.ctl.go_to_slice(int(item.data(Qt.ItemDataRole.UserRole)))

    def selected_slices(self) -> list[int]:
        rows = sorted({ix.row() for ix in self.table.selectedIndexes()})
        return [int(self.table.item(r, 0).data(Qt.ItemDataRole.UserRole)) for r in rows]

    def _accept_selected(self) -> None:
        chosen = self.selected_slices()
        if chosen:
            self.review.accept(chosen)

    def _toggle_conf(self, on: bool) -> None:
        if "confidence" in self.review.layers:
            self.review.layers["confidence"].visible = on

    def _export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export masks", "mask.nii.gz",
                                              "NIfTI (*.nii.gz *.nii);;TIFF (*.tif *.tiff);;PNG slices (*.png)")
        if path:
            self.export(path)

    def export(self, path: str) -> list:
        try:
            files = self.ctl.sessions.export_masks(path, self.source_combo.currentData())
            show_info(f"Wrote {len(files)} file(s): {files[0]}" + (" ..." if len(files) > 1 else ""))
            return files
        except SamatchError as exc:
            notify_error(str(exc))
            return []
