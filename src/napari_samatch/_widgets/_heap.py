"""Keep Python's cyclic garbage collector from freezing the viewer while a run trains.

With napari, Qt and torch loaded, one full (oldest-generation) collection walks about a million objects
and holds the GIL for 0.26-0.38 s on our 2-core machine. During a run the worker thread allocates enough
to trigger one every few seconds, in whichever thread happens to allocate: the viewer stalled 303-389 ms in
3 of 4 short runs (tests/test_widgets.py::test_ui_never_freezes_during_training). While a run is active the
objects that already live are frozen (``gc.freeze``), so the collector's passes scan only what the run
creates; the run's end thaws them and the next collection frees whatever died meanwhile.
"""

from __future__ import annotations

import gc

_active = 0  # runs holding the heap frozen (a cohort and a volume may overlap)


def hold_heap() -> None:
    """A run starts: collect what is already garbage (one pause, right after the user's click), then freeze."""
    global _active
    _active += 1
    if _active == 1:
        gc.collect()
        gc.freeze()


def release_heap() -> None:
    """A run ended (finished, stopped or failed): thaw once no other run holds the heap."""
    global _active
    if _active == 0:
        return
    _active -= 1
    if _active == 0:
        gc.unfreeze()
