"""Ending cleanly: no worker thread (training, box edit, autosave) outlives the application.

A finished autosave must reach the disk, and a worker still running when Python exits would signal Qt
objects that are already gone (Qt then aborts the process).
"""

from __future__ import annotations

import atexit

_QUIT_HOOKED: set[int] = set()  # applications whose quit already waits for our workers


def finish_workers(timeout_ms: int = 60_000) -> bool:
    """Stop every viewer's run and wait for all worker threads (training, box edits, autosaves).

    Called when the application quits: an autosave still writing then finishes instead of dying with
    the process (its atomic write would keep the previous session, but the latest edits would be lost),
    and no worker outlives the Qt objects it signals. True when all ended within the timeout.
    """
    from qtpy.QtCore import QThreadPool

    from ._registry import CONTROLLERS

    for ctl in list(CONTROLLERS.values()):
        ctl.stop_job()
    return bool(QThreadPool.globalInstance().waitForDone(timeout_ms))


def finish_on_quit() -> None:
    """Connect :func:`finish_workers` to the application's quit, once per process."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None and id(app) not in _QUIT_HOOKED:
        if not _QUIT_HOOKED:  # a script that closes its viewer and ends never quits the app
            atexit.register(_finish_at_exit)
        app.aboutToQuit.connect(finish_workers)
        _QUIT_HOOKED.add(id(app))


def _finish_at_exit() -> None:
    from qtpy.QtWidgets import QApplication

    if QApplication.instance() is not None:
        finish_workers()
