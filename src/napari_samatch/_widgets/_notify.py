"""How the docks tell the user about a problem: one napari notification with the error's sentence."""

from __future__ import annotations

from napari.utils.notifications import show_error


def notify_error(message: str) -> None:
    show_error(message)
