"""The one controller of each viewer, by the viewer's id: the docks share it, quitting stops its work."""

from __future__ import annotations

from typing import Any

CONTROLLERS: dict[int, Any] = {}  # id(viewer) -> its Controller; an entry leaves with its viewer
