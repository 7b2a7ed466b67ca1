"""The Cohort dock's folder form: the Images and Labels folders, whether the label files are complete, and the
Open and Close buttons. The form only holds what the user typed and ticked; the dock opens and closes the cohort.
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.data.cohort_state import CohortState

COMPLETE_TEXT = "Label files are complete (every slice labeled, background-only ones too)"
COMPLETE_TIP = ("Tick when the label files are fully annotated ground truth (e.g. ACDC's): every slice of a volume "
                "with a label file is then a labeled slice, the empty ones as background. Leave it off when the "
                "label files hold only a few painted slices. It applies to the open cohort at once (and is read "
                "when a cohort opens). Corrections painted on such a volume keep it complete.")


class CohortForm(QWidget):
    """Images and Labels folders with Browse buttons, the complete-labels box, Open and Close."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.images_edit, self.labels_edit = QLineEdit(), QLineEdit()
        self.images_edit.setPlaceholderText("a folder of volumes (NIfTI, TIFF, .h5, DICOM series)")
        self.labels_edit.setPlaceholderText("optional: label files named like the volumes")
        for label, edit, what in (("Images", self.images_edit, "images"), ("Labels", self.labels_edit, "labels")):
            row = QHBoxLayout()
            btn = QPushButton("Browse...")
            btn.clicked.connect(lambda _=False, e=edit, w=what: self.browse(e, w))
            row.addWidget(edit, 1)
            row.addWidget(btn)
            form.addRow(label, row)
        # under the Labels row: it says something about the label files, not about the volumes
        self.complete_box = QCheckBox(COMPLETE_TEXT)
        self.complete_box.setToolTip(COMPLETE_TIP)
        form.addRow("", self.complete_box)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.open_btn = QPushButton("Open folder...")
        self.open_btn.setToolTip("Open the cohort of the Images folder (and the optional Labels folder).")
        self.close_btn = QPushButton("Close cohort")
        row.addWidget(self.open_btn)
        row.addWidget(self.close_btn)
        lay.addLayout(row)

    def browse(self, edit: QLineEdit, what: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, f"The folder of {what}")
        if folder:
            edit.setText(folder)

    def folders(self) -> tuple[str, str | None, bool]:
        """What the user asked to open: images folder ('' if none), labels folder or None, complete."""
        return (self.images_edit.text().strip(), self.labels_edit.text().strip() or None,
                self.complete_box.isChecked())

    def show_cohort(self, state: CohortState) -> None:
        """The open cohort's folders and flag (a cohort opened from a session too); the box's signal is held back,
        since this is what the cohort already is, not a change asked for."""
        self.images_edit.setText(str(state.images))
        self.labels_edit.setText(str(state.labels or ""))
        self.set_complete(state.labels_complete)

    def set_complete(self, on: bool) -> None:
        self.complete_box.blockSignals(True)
        self.complete_box.setChecked(bool(on))
        self.complete_box.blockSignals(False)
