"""One training run in a napari worker thread, talking to the main thread only through Qt signals.

``Engine.run`` blocks, so it runs inside a ``thread_worker``. Its event callback is called in that
worker thread: it converts pseudo-label previews to the display frame there (resizing is work the main
thread should not do), batches progress events to at most ``max_rate`` per second, and emits them with a
Qt signal. The signal's receiver is a QObject living in the main thread, so Qt queues the call and every
layer change happens on the main thread.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any, Callable

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

from ..core.engine import events as ev
from ..core.errors import SamatchError
from ._heap import hold_heap, release_heap
from ._layers import preview_to_display

log = logging.getLogger(__name__)
PREVIEW_CHUNK = 16  # slices per preview request: bounded work per request, progressive display


def failure_message(exc: BaseException, what: str = "Training") -> str:
    """A user-facing sentence for any exception (core errors already carry one)."""
    if isinstance(exc, SamatchError):
        return str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return (f"{what} ran out of memory. Choose a smaller image size or batch in Advanced settings, "
                "or device 'cpu' if the GPU is small.")
    return f"{what} failed unexpectedly ({type(exc).__name__}: {exc}). See the log, and report it if it repeats."


class TrainingJob(QObject):
    """Build an engine (or continue one), run it, then preview every slice; all in a worker thread.

    ``make_engine`` runs in the worker thread and returns the engine to run. ``previews=False`` (a cohort: its
    slices are not the shown image's) sends no pseudo-labels to the review layers. Signals (main thread):
    ``event(Event)`` and ``done(dict)`` with keys ``engine``, ``summary``, ``error`` (a sentence or None).
    """

    event = Signal(object)
    done = Signal(object)

    def __init__(self, make_engine: Callable[[], Any], n_slices: int, hw: tuple[int, int],
                 checkpoint_dir: str | None, preview_every_s: float = 20.0, max_rate: float = 10.0,
                 final_preview: bool = True, run: bool = True, previews: bool = True) -> None:
        super().__init__()
        self.make_engine = make_engine
        self.n_slices = n_slices
        self.hw = hw
        self.checkpoint_dir = checkpoint_dir
        self.preview_every_s = preview_every_s
        self.min_interval = 1.0 / max_rate
        self.previews = previews
        self.final_preview = final_preview and previews
        self.do_run = run
        self.engine = None
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._pending: ev.Event | None = None
        self._points: list[tuple[int, str, dict]] = []
        self._last_emit = 0.0
        self._last_preview = 0.0
        self._preview_cursor = 0
        self.worker = None
        self._holds_heap = False
        self.emitted = 0  # signal emissions (tests check the throttle)

    # ------------------------------------------------------------------ control (main thread)
    def start(self) -> None:
        self.worker = create_worker(self._work, _start_thread=False)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        hold_heap()
        self._holds_heap = True
        self.worker.start()

    def pause(self) -> None:
        self._pause.set()
        if self.engine is not None:
            self.engine.pause()

    def resume(self) -> None:
        self._pause.clear()
        if self.engine is not None:
            self.engine.resume()

    def stop(self) -> None:
        self._stop.set()
        self._pause.clear()
        if self.engine is not None:
            self.engine.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _on_returned(self, result: dict) -> None:
        self._release()
        self.done.emit(result)

    def _on_errored(self, exc: BaseException) -> None:  # only if _work itself breaks
        result = {"engine": self.engine, "summary": None, "error": failure_message(exc)}
        self._release()
        self.done.emit(result)

    def _release(self) -> None:
        # A finished worker outlives its run and keeps this job alive; the job must not keep the data
        # (make_engine's closure holds the volume) or the engine once the controller has them.
        self.make_engine = None
        self.engine = None
        if self._holds_heap:
            self._holds_heap = False
            release_heap()

    # ------------------------------------------------------------------ worker thread
    def _emit(self, event: ev.Event) -> None:
        self.emitted += 1
        self.event.emit(event)

    def _flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.data = {**pending.data, "points": self._points}
            self._points = []
            self._last_emit = time.monotonic()
            self._emit(pending)

    def _callback(self, event: ev.Event) -> None:
        if event.kind == ev.PROGRESS:
            self._points.append((event.global_iteration, event.stage, dict(event.data.get("losses", {}))))
            self._pending = event
            now = time.monotonic()
            if now - self._last_emit >= self.min_interval:
                self._flush()
            if self.previews and event.stage == "joint" and now - self._last_preview >= self.preview_every_s:
                self._request_preview(now)
            return
        if event.kind == ev.PSEUDO_LABELS:
            if not self.previews:
                return
            event.data = self._display(event.data)
        self._flush()
        self._emit(event)

    def _request_preview(self, now: float) -> None:
        start = self._preview_cursor
        chunk = [(start + k) % self.n_slices for k in range(min(PREVIEW_CHUNK, self.n_slices))]
        self._preview_cursor = (start + len(chunk)) % self.n_slices
        self._last_preview = now
        self.engine.request_preview(sorted(set(chunk)), native=True)

    def _display(self, preview: dict) -> dict:
        return preview_to_display(preview, self.engine.config.size, self.hw)

    def _log(self, message: str) -> None:
        self._emit(ev.Event(ev.LOG, message=message))

    def _work(self) -> dict:
        summary = None
        try:
            self._log("Preparing the data and the models...")
            t0 = time.perf_counter()
            self.engine = engine = self.make_engine()
            self._log(f"Ready in {time.perf_counter() - t0:.1f} s on {engine.device}.")
            if self._pause.is_set():
                engine.pause()
            if self._stop.is_set():
                summary = {"stopped": True}
                self._emit(ev.Event(ev.STOPPED, message="Stopped before the first step"))
            elif self.do_run:
                self._last_preview = time.monotonic() - self.preview_every_s  # preview at the joint stage's start
                summary = engine.run(self._callback, checkpoint_dir=self.checkpoint_dir)
            self._flush()
            if self.final_preview:
                self._preview_all(engine)
            return {"engine": engine, "summary": summary, "error": None}
        except Exception as exc:  # noqa: BLE001 - every failure becomes a sentence for the user
            log.error("training failed:\n%s", traceback.format_exc())
            self._flush()
            return {"engine": self.engine, "summary": summary, "error": failure_message(exc)}

    def _preview_all(self, engine) -> None:
        """Pseudo-labels, confidence and prompts of every slice, a chunk at a time (cancellable)."""
        self._log("Computing pseudo-labels for every slice...")
        for start in range(0, self.n_slices, PREVIEW_CHUNK):
            if self._stop.is_set():
                self._log("Stopped: press 'Update pseudo-labels' in the Review dock to see them.")
                return
            idx = list(range(start, min(self.n_slices, start + PREVIEW_CHUNK)))
            data = self._display(engine.preview(idx, native=True))
            self._emit(ev.Event(ev.PSEUDO_LABELS, message=f"Pseudo-labels of slices {idx[0]}-{idx[-1]}", data=data))
