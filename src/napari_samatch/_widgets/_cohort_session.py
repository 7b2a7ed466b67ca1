"""The open cohort in the saved session: what is written (folders, the member shown, the paintings) and how it
comes back (the Cohort dock shows it, then the model is rebuilt on the cohort's slices in a worker).

The file format is the core's (``core/data/session.py``, ``CohortState.session_doc``); the SessionManager calls
these when a cohort is open, so closing napari loses no painting of any member.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_info

from ..core.data.cohort_state import CohortState
from ..core.data.session import SessionState
from ..core.errors import DataError

log = logging.getLogger(__name__)


def cohort_snapshot(ctl: Any, train_settings: dict[str, Any]) -> SessionState:
    """The open cohort as a session (main thread). The paintings are replaced on change, never edited, so the
    dict's arrays need no copies; the shown member's layers are its painting, so they are not saved twice."""
    ctl.keep_cohort_painting()
    settings = {"axis": ctl.axis, "class_names": list(ctl.class_names), "val_slices": ctl.val_slices,
                "train": dict(train_settings)}
    return SessionState(name=f"cohort {ctl.cohort.images.name}", settings=settings,
                        cohort={**ctl.cohort.session_doc(), "shown": ctl.cohort_shown},
                        cohort_paintings=dict(ctl.cohort.paintings))


def open_cohort_session(manager: Any, folder: str | Path, state: SessionState) -> SessionState:
    """Put a saved cohort back: the cohort with its paintings (the Cohort dock shows it, and the member it
    showed), the settings, then the model (in a worker)."""
    ctl, st = manager.ctl, state.settings
    if ctl.job is not None:
        raise DataError("A run is going; open the session when it ends (or stop it).")
    cohort = CohortState.from_session(state.cohort, state.cohort_paintings)
    ctl.axis = cohort.axis
    ctl.class_names = [str(n) for n in st.get("class_names") or []]
    ctl.val_slices = int(st.get("val_slices", 0))
    ctl.cohort, ctl.cohort_shown = cohort, None
    manager.settings = dict(st.get("train") or {})
    manager.set_folder(folder)
    manager.checkpoint_path = state.checkpoint
    try:  # the Cohort dock shows the cohort: opened here when the session was reopened from another dock
        ctl.viewer.window.add_plugin_dock_widget("napari-samatch", "Cohort")
    except Exception as exc:  # noqa: BLE001 - no window (headless): the cohort is in place all the same
        log.info("the Cohort dock could not be opened: %s", exc)
    ctl.cohort_changed.emit(state.cohort.get("shown"))
    ctl.selection_changed.emit()
    if state.checkpoint is not None:
        manager.load_model(state.checkpoint, preview=False)
    show_info(f"Cohort session reopened from {folder}: {len(cohort.members)} volumes, "
              f"{len(cohort.paintings)} painted here.")
    return state
