"""The Cohort dock's "Predict all and export": every volume segmented with the current model, one mask per volume
into a folder, in a worker thread (``core/match/cohort_masks.py``, as ``napari-samatch predict --images``).

:class:`CohortExport` is mixed into the Cohort dock (``_cohort_widget.py``), which holds what it reads: the
controller (``ctl``: the cohort and the engine), the status line, the export button, ``written`` and
``export_worker``.
"""

from __future__ import annotations

from pathlib import Path

from napari.qt.threading import create_worker
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QFileDialog, QMessageBox

from ..core.device import autocast
from ..core.errors import DataError, SamatchError
from ..core.match.cohort_masks import check_mask_folder, mask_targets, predict_to_folder
from ._notify import notify_error
from ._runner import failure_message


class CohortExport:
    """Predict every member of the open cohort and write its mask (the Cohort dock's export half)."""

    def _export_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Write one mask per volume into a folder")
        if folder:
            self.predict_all(folder)

    def predict_all(self, folder: str | Path, overwrite: bool | None = None) -> bool:
        """Predict every member with the current model and write its mask into ``folder`` (worker thread).

        Existing masks there are replaced only when ``overwrite`` (``None``: ask the user). True when started.
        """
        ctl, state = self.ctl, self.ctl.cohort
        try:
            if state is None:
                raise DataError("Open a cohort first (a folder of volumes), then predict all of its volumes.")
            if ctl.engine is None:
                raise DataError("There is no model yet: train one (Start in the Train dock) or load one.")
            if ctl.job is not None or self.export_worker is not None:
                raise DataError("A run or an export is going; predict all when it ends.")
            existing = [t for t in mask_targets(state.members, folder) if t.is_file()]
            if existing and overwrite is None:
                overwrite = self._confirm_replace(folder, len(existing))
            targets = check_mask_folder(state.members, folder, bool(overwrite),
                                        {"images folder": state.images, "labels folder": state.labels},
                                        fix="choose another folder",
                                        exists_fix="choose another folder, or agree to replace the masks there",
                                        writable_fix="Choose another folder.")
        except SamatchError as exc:
            notify_error(str(exc))
            return False
        engine, members = ctl.engine, list(state.members)

        def work():  # worker thread, one volume at a time (the main thread sees progress and may quit)
            amp = autocast(engine.device, engine.config.amp)
            for k, (m, target) in enumerate(zip(members, targets)):
                with engine.lock:
                    predict_to_folder(engine.unet, engine.config.size, [m], [target], bool(overwrite),
                                      axis=state.axis, device=engine.device, amp=amp)
                yield k + 1

        self.written = []
        self.status.setText(f"Predicting {len(members)} volumes into {folder}...")
        self.export_btn.setEnabled(False)
        worker = create_worker(work, _start_thread=False)
        worker.yielded.connect(lambda k: (self.written.append(targets[k - 1]),
                                          self.status.setText(f"{k} of {len(members)} masks written to {folder}.")))
        worker.returned.connect(lambda _=None: self._export_done(folder, None))
        worker.errored.connect(lambda exc: self._export_done(folder, failure_message(exc, "Predicting the cohort")))
        self.export_worker = worker
        worker.start()
        return True

    def _confirm_replace(self, folder: str | Path, n: int) -> bool:
        answer = QMessageBox.question(self, "Replace masks?", f"{n} mask(s) already exist in {folder}. Replace them?")
        return answer == QMessageBox.StandardButton.Yes

    def _export_done(self, folder: str | Path, error: str | None) -> None:
        self.export_worker = None
        self.export_btn.setEnabled(True)
        if error:
            notify_error(error)
            self.status.setText(f"Export stopped after {len(self.written)} mask(s): {error}")
        else:
            show_info(f"{len(self.written)} masks written to {folder}.")
            self._show_status()

