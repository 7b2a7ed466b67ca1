"""The Data dock: which image and labels layers, the slice axis, the class names, the labeled slices,
and the session (where autosaves go; save as, open)."""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import SamatchError
from ..core.prior.prior import one_painted_slice_note
from ._controller import get_controller
from ._notify import notify_error

WARN_STYLE = "color: #ffb74d;"


class DataWidget(QWidget):
    """Pick the image and labels layers, the slice axis and the class names; see what counts as labeled."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.ctl = get_controller(napari_viewer)
        lay = QVBoxLayout(self)

        box = QGroupBox("Layers")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image to segment: 2D, 3D, or a stack of 2D images.")
        form.addRow("Image", self.image_combo)
        row = QHBoxLayout()
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip("Your labels: paint a few slices (0 = background, 1, 2, ... = classes).")
        self.new_labels_btn = QPushButton("New")
        self.new_labels_btn.setToolTip("Create an empty labels layer of the image's shape.")
        row.addWidget(self.labels_combo, 1)
        row.addWidget(self.new_labels_btn)
        form.addRow("Labels", row)
        self.axis_spin = QSpinBox()
        self.axis_spin.setToolTip("The axis along which the volume is cut into 2D slices (0 for a stack).")
        form.addRow("Slice axis", self.axis_spin)
        self.classes_edit = QLineEdit()
        self.classes_edit.setPlaceholderText("background, RV, Myo, LV")
        self.classes_edit.setToolTip("Class names separated by commas, background first; label value k is class k.")
        form.addRow("Classes", self.classes_edit)
        lay.addWidget(box)

        box = QGroupBox("Labeled slices")
        v = QVBoxLayout(box)
        self.labeled_label = QLabel()
        self.labeled_label.setWordWrap(True)
        v.addWidget(self.labeled_label)
        self.labeled_list = QListWidget()
        self.labeled_list.setMaximumHeight(120)
        self.labeled_list.setToolTip("Slices holding any non-zero label. Click one to show it.")
        v.addWidget(self.labeled_list)
        lay.addWidget(box)

        box = QGroupBox("Session")
        v = QVBoxLayout(box)
        self.session_label = QLabel()
        self.session_label.setWordWrap(True)
        v.addWidget(self.session_label)
        row = QHBoxLayout()
        self.save_btn = QPushButton("Save session as...")
        self.open_btn = QPushButton("Open session...")
        row.addWidget(self.save_btn)
        row.addWidget(self.open_btn)
        v.addLayout(row)
        lay.addWidget(box)
        lay.addStretch(1)

        self.image_combo.activated.connect(self._image_chosen)
        self.labels_combo.activated.connect(self._labels_chosen)
        self.new_labels_btn.clicked.connect(self._new_labels)
        self.axis_spin.valueChanged.connect(self.ctl.set_axis)
        self.classes_edit.editingFinished.connect(self._classes_edited)
        self.labeled_list.itemClicked.connect(lambda item: self.ctl.go_to_slice(int(item.data(256))))
        self.save_btn.clicked.connect(self._save_as)
        self.open_btn.clicked.connect(self._open)
        self.ctl.layers_changed.connect(self.refresh)
        self.ctl.selection_changed.connect(self.refresh)
        self.ctl.labeled_changed.connect(self._show_labeled)
        self.ctl.sessions.saved.connect(self._on_saved)
        self.refresh()

    # ------------------------------------------------------------------ view
    def refresh(self) -> None:
        ctl = self.ctl
        for combo, layers, current in ((self.image_combo, ctl.image_layers(), ctl.image_layer),
                                       (self.labels_combo, ctl.labels_layers(), ctl.labels_layer)):
            combo.blockSignals(True)
            combo.clear()
            for ly in layers:
                combo.addItem(ly.name)
            combo.setCurrentIndex(layers.index(current) if current in layers else -1)
            combo.blockSignals(False)
        nd = len(ctl.image_shape())
        self.axis_spin.blockSignals(True)
        self.axis_spin.setRange(0, max(0, nd - 1))
        self.axis_spin.setValue(ctl.axis)
        self.axis_spin.setEnabled(nd == 3)
        self.axis_spin.blockSignals(False)
        if not self.classes_edit.hasFocus():
            self.classes_edit.setText(", ".join(ctl.class_names))
        self._show_labeled()
        self._show_session()

    def _show_labeled(self) -> None:
        ctl = self.ctl
        labeled, n = ctl.labeled_slices(), ctl.num_slices()
        self.labeled_list.clear()
        for i in labeled:
            item = QListWidgetItem(f"slice {i}")
            item.setData(256, i)
            self.labeled_list.addItem(item)
        if ctl.labels_layer is None:
            self.labeled_label.setText("Choose a labels layer, or press New to create one, then paint a few slices.")
            self.labeled_label.setStyleSheet(WARN_STYLE)
        elif not labeled:
            self.labeled_label.setText(f"No slice is labeled yet (0 of {n}). Paint at least one slice "
                                       "before training; a few well-spread slices work best.")
            self.labeled_label.setStyleSheet(WARN_STYLE)
        else:
            painted = set(labeled)
            gamble = one_painted_slice_note(["volume"] * n, [i in painted for i in range(n)])
            self.labeled_label.setText(f"{len(labeled)} of {n} slices labeled: {', '.join(map(str, labeled))}. "
                                       + (gamble or "The other slices are unlabeled."))
            self.labeled_label.setStyleSheet(WARN_STYLE if gamble else "")

    def _on_saved(self, folder: str) -> None:
        self._show_session()

    def _show_session(self) -> None:
        s = self.ctl.sessions
        if self.ctl.image_layer is None:
            self.session_label.setText("Open an image to start a session.")
            return
        import time

        when = time.strftime("%H:%M:%S", time.localtime(s.last_saved)) if s.last_saved else "not yet"
        self.session_label.setText(f"Autosaved to {s.folder} (last: {when}).")

    # ------------------------------------------------------------------ actions
    def _image_chosen(self, row: int) -> None:
        layers = self.ctl.image_layers()
        if 0 <= row < len(layers):
            self.ctl.set_image_layer(layers[row])

    def _labels_chosen(self, row: int) -> None:
        layers = self.ctl.labels_layers()
        if 0 <= row < len(layers):
            try:
                self.ctl.set_labels_layer(layers[row])
            except SamatchError as exc:
                notify_error(str(exc))
                self.refresh()

    def _new_labels(self) -> None:
        try:
            self.ctl.create_labels_layer()
        except SamatchError as exc:
            notify_error(str(exc))

    def _classes_edited(self) -> None:
        self.ctl.set_class_names(self.classes_edit.text().split(","))

    def _save_as(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the session into a folder")
        if folder:
            self.ctl.sessions.save(folder)
            show_info(f"Saving the session to {folder}.")

    def _open(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a session folder")
        if folder:
            self.open_session(folder)

    def open_session(self, folder: str | Path) -> bool:
        try:
            self.ctl.sessions.open(folder)
            return True
        except SamatchError as exc:
            notify_error(str(exc))
            return False
