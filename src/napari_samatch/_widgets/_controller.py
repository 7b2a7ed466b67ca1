"""The state the three docks share for one viewer: chosen layers, classes, the engine and its run.

The docks are thin views of one :class:`Controller` per viewer (``get_controller``). It never computes on
the main thread: training, previews, refinement and saving go to worker threads, and their results come
back through Qt signals.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils import progress
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal

from ..core.config import RunConfig
from ..core.data.cohort_state import CohortState
from ..core.data.holdout import held_out
from ..core.data.slices import SliceSet, default_class_names
from ..core.data.volume import Volume
from ..core.engine import events as ev
from ..core.errors import DataError, SamatchError
from ._layers import slice_shape
from ._notify import notify_error
from ._registry import CONTROLLERS
from ._runner import TrainingJob
from ._shutdown import finish_on_quit, finish_workers
from ._slicing import build_slices, cohort_engine, volume_from_layers

log = logging.getLogger(__name__)


def unwrap(viewer: Any) -> Any:
    """The real viewer behind napari's ``PublicOnlyProxy`` (the docks may receive either)."""
    while hasattr(viewer, "__wrapped__"):
        viewer = viewer.__wrapped__
    return viewer


def get_controller(viewer: Any) -> "Controller":
    """The one controller of this viewer, created on first use."""
    real = unwrap(viewer)
    ctl = CONTROLLERS.get(id(real))
    if ctl is None or ctl.viewer is not real:
        ctl = Controller(real)
        CONTROLLERS[id(real)] = ctl
        weakref.finalize(real, CONTROLLERS.pop, id(real), None)
    return ctl


class Controller(QObject):
    """Shared state; see the module docstring. Signals are emitted on the main thread only."""

    layers_changed = Signal()        # layers were added, removed or renamed
    selection_changed = Signal()     # image / labels layer, axis or class names changed
    labeled_changed = Signal()       # the set of labeled slices changed
    run_state_changed = Signal(str)  # idle, running, paused, stopping
    engine_event = Signal(object)    # core Event, for the Train dock
    engine_changed = Signal()        # a model became available (trained, loaded)
    review_changed = Signal()        # pseudo-labels, confidence or prompts changed
    cohort_changed = Signal(object)  # a cohort was put in place (a reopened session): the member to show, or None
    message = Signal(str)            # a line for the log

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self._viewer = weakref.ref(viewer)
        self.image_layer: Image | None = None
        self.labels_layer: Labels | None = None
        self.axis = 0
        self.class_names: list[str] = []
        self.engine = None
        self.job: TrainingJob | None = None
        self.state = "idle"
        self.val_slices = 0
        self.last_config: RunConfig | None = None
        self.cohort: CohortState | None = None  # while a cohort is open (Cohort dock), Start trains on all of it
        self.cohort_shown: str | None = None    # the member whose layers are shown
        self._labeled: list[int] = []
        self._pbar: progress | None = None
        self._labeled_timer = QTimer(self)
        self._labeled_timer.setSingleShot(True)
        self._labeled_timer.setInterval(250)
        self._labeled_timer.timeout.connect(self.refresh_labeled)
        from ._review import ReviewLayers
        from ._sessions import SessionManager

        self.review = ReviewLayers(self)
        self.sessions = SessionManager(self)
        for name in ("inserted", "removed", "moved"):
            getattr(viewer.layers.events, name).connect(self._on_layers)
        self._pick_defaults()
        # main-thread time spent on each engine event: (kind, wall ms, cpu ms); the stall test reads it
        self.handler_ms: deque[tuple[str, float, float]] = deque(maxlen=5000)
        finish_on_quit()

    @property
    def viewer(self) -> Any:
        return self._viewer()

    # ------------------------------------------------------------------ layers
    def _on_layers(self, event=None) -> None:
        layers = list(self.viewer.layers) if self.viewer is not None else []
        if self.image_layer is not None and self.image_layer not in layers:
            self.image_layer = None
        if self.labels_layer is not None and self.labels_layer not in layers:
            self.set_labels_layer(None)
        self.review.forget_removed(layers)
        self._pick_defaults()
        self.layers_changed.emit()

    def image_layers(self) -> list[Image]:
        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and not self.review.owns(ly)]

    def labels_layers(self) -> list[Labels]:
        return [ly for ly in self.viewer.layers if isinstance(ly, Labels) and not self.review.owns(ly)]

    def _pick_defaults(self) -> None:
        if self.image_layer is None and self.image_layers():
            self.set_image_layer(self.image_layers()[0], emit=False)
        if self.labels_layer is None and self.image_layer is not None:
            fits = [ly for ly in self.labels_layers() if ly.data.shape == self.image_shape()]
            if fits:
                self.set_labels_layer(fits[0], emit=False)

    def set_image_layer(self, layer: Image | None, emit: bool = True) -> None:
        self.image_layer = layer
        if layer is not None:
            names = layer.metadata.get("class_names")
            if names and not self.class_names:
                self.class_names = [str(n) for n in names]
            self.axis = min(self.axis, max(0, len(self.image_shape()) - 1))
            if self.labels_layer is not None and self.labels_layer.data.shape != self.image_shape():
                self.set_labels_layer(None, emit=False)
            self.sessions.image_changed()
        if emit:
            self.selection_changed.emit()

    def set_labels_layer(self, layer: Labels | None, emit: bool = True) -> None:
        old = self.labels_layer
        if old is not None:
            old.events.paint.disconnect(self._on_labels_paint)
            for name in ("paint", "data", "set_data"):
                getattr(old.events, name).disconnect(self._on_labels_edit)
        if layer is not None and self.image_layer is not None and layer.data.shape != self.image_shape():
            raise DataError(f"Labels layer '{layer.name}' has shape {layer.data.shape} but image "
                            f"'{self.image_layer.name}' has {self.image_shape()}. Create a new labels layer instead.")
        self.labels_layer = layer
        if layer is not None:
            layer.events.paint.connect(self._on_labels_paint)
            for name in ("paint", "data", "set_data"):
                getattr(layer.events, name).connect(self._on_labels_edit)
            if not self.class_names and layer.metadata.get("class_names"):
                self.class_names = [str(n) for n in layer.metadata["class_names"]]
        self.refresh_labeled()
        if emit:
            self.selection_changed.emit()

    def image_shape(self) -> tuple[int, ...]:
        """Shape of the image without a colour axis."""
        ly = self.image_layer
        if ly is None:
            return ()
        shape = tuple(int(s) for s in ly.data.shape)
        return shape[:-1] if ly.rgb else shape

    def create_labels_layer(self) -> Labels:
        """A new empty labels layer matching the image (scale, translate and metadata copied)."""
        img = self.image_layer
        if img is None:
            raise DataError("Choose an image layer first; the new labels layer takes its shape.")
        nd = len(self.image_shape())
        layer = self.viewer.add_labels(np.zeros(self.image_shape(), np.uint8), name=f"{img.name} labels",
                                       scale=tuple(img.scale)[:nd], translate=tuple(img.translate)[:nd],
                                       metadata={k: v for k, v in img.metadata.items()})
        self.set_labels_layer(layer)
        return layer

    def set_axis(self, axis: int) -> None:
        if axis != self.axis:
            self.axis = axis
            self.refresh_labeled()
            self.selection_changed.emit()

    def set_class_names(self, names: list[str]) -> None:
        names = [n.strip() for n in names if n.strip()]
        if names != self.class_names:
            self.class_names = names
            self.selection_changed.emit()

    def effective_class_names(self) -> list[str]:
        """The named classes, extended with defaults when the labels hold higher values."""
        names = list(self.class_names) or ["background"]
        top = int(self.labels_layer.data.max()) if self.labels_layer is not None and self.labels_layer.data.size else 0
        n = max(len(names), top + 1, 2)
        return (names + default_class_names(n)[len(names):])[:n]

    # ------------------------------------------------------------------ slices
    def num_slices(self) -> int:
        shape = self.image_shape()
        return 1 if len(shape) == 2 else (shape[self.axis] if shape else 0)

    def slice_hw(self) -> tuple[int, int]:
        return slice_shape(self.image_shape(), self.axis)

    def current_slice(self) -> int:
        """The slice the viewer shows along the slice axis (0 for 2D)."""
        if len(self.image_shape()) != 3 or self.image_layer is None:
            return 0
        world = self.viewer.dims.point
        data = self.image_layer.world_to_data(world)
        nd = len(data)
        return int(np.clip(round(float(data[nd - 3 + self.axis])), 0, self.num_slices() - 1))

    def go_to_slice(self, index: int) -> None:
        """Show slice ``index`` (3D: move the slider of the slice axis)."""
        if len(self.image_shape()) != 3 or self.image_layer is None:
            return
        dims = self.viewer.dims
        axis_world = dims.ndim - 3 + self.axis
        coord = np.zeros(len(self.image_shape()))
        coord[self.axis] = index
        world = self.image_layer.data_to_world(coord)
        dims.set_point(axis_world, float(world[self.axis]))

    def _on_labels_paint(self, event=None) -> None:
        self.sessions.mark_dirty("labels", soon=True)

    def _on_labels_edit(self, event=None) -> None:
        self.sessions.mark_dirty("labels")
        self._labeled_timer.start()

    def refresh_labeled(self) -> None:
        """Recompute which slices hold any non-zero label (called debounced after edits)."""
        new: list[int] = []
        if self.labels_layer is not None:
            lab = np.asarray(self.labels_layer.data)
            if lab.ndim == 2:
                new = [0] if lab.any() else []
            elif lab.ndim == 3:
                others = tuple(a for a in range(3) if a != self.axis)
                new = np.flatnonzero(lab.any(axis=others)).tolist()
        if new != self._labeled:
            self._labeled = new
            self.labeled_changed.emit()

    def labeled_slices(self) -> list[int]:
        return list(self._labeled)

    # ------------------------------------------------------------------ data for the engine
    def volume(self) -> Volume:
        """A snapshot of the chosen image and labels (labels copied, so painting may go on)."""
        return volume_from_layers(self.image_layer, self.labels_layer, self.effective_class_names())

    def held_out(self, labeled: list[int]) -> list[int]:
        return held_out(labeled, self.val_slices)

    def build_slices(self, vol: Volume, labeled: list[int], held: list[int]) -> tuple[SliceSet, SliceSet | None]:
        return build_slices(vol, self.axis, labeled, held, self.effective_class_names())

    # ------------------------------------------------------------------ training
    def start(self, config: RunConfig, fresh: bool = True) -> bool:
        """Start a run: fresh models, or the next round from the current ones. False when refused."""
        if self.job is not None:
            show_warning("A run is already going. Stop it first, or wait until it ends.")
            return False
        if self.cohort is not None:
            return self._start_cohort(config, fresh)
        try:
            labeled = self.labeled_slices()
            if not labeled:
                self.refresh_labeled()
                labeled = self.labeled_slices()
            if not labeled:
                raise DataError("No slice is labeled yet. Paint at least one slice of the labels layer "
                                "(ideally a few well-spread ones), then press Start again.")
            if not fresh and self.engine is None:
                raise DataError("There is no model to continue yet. Press Start to train one, or load a model.")
            vol = self.volume()
            names = self.effective_class_names()
            config = config.replace(num_classes=len(names), class_names=names, checkpoint_dir=None)
            held = self.held_out(labeled)
        except SamatchError as exc:
            notify_error(str(exc))
            return False
        self.last_config = config
        engine = None if fresh else self.engine
        ckpt_dir = str(self.sessions.folder / "checkpoints")

        def make_engine():  # worker thread
            from ..core.engine.engine import Engine

            data, val = self.build_slices(vol, labeled, held)
            if engine is None:
                return Engine(data, config, val=val)
            engine.next_round(data, config, val)
            return engine

        self.sessions.autosave(force=True)
        what = "Starting a new run" if fresh else "Next round from the current models"
        self.message.emit(f"{what}: {len(labeled)} labeled slice(s) {labeled}"
                          + (f", {held} held out for validation" if held else "") + ".")
        self._launch(TrainingJob(make_engine, self.num_slices(), self.slice_hw(), ckpt_dir), config.total_iters)
        return True

    def keep_cohort_painting(self) -> None:
        """Hand the shown cohort member's labels layer to the cohort state (kept in memory if painted)."""
        ly = self.labels_layer
        if self.cohort is not None and ly is not None and ly.metadata.get("cohort_member") == self.cohort_shown:
            self.cohort.keep(self.cohort_shown, np.asarray(ly.data))

    def _start_cohort(self, config: RunConfig, fresh: bool) -> bool:
        """One model on every member of the open cohort; no previews (its slices are not the shown image's)."""
        cohort = self.cohort
        try:
            if not fresh and self.engine is None:
                raise DataError("There is no model to continue yet. Press Start to train one, or load a model.")
            self.keep_cohort_painting()
            paintings = dict(cohort.paintings)  # arrays are replaced, never edited, by keep(): a snapshot
            cohort.check_labeled(paintings)
        except SamatchError as exc:
            notify_error(str(exc))
            return False
        self.last_config = config
        engine, names, val_slices = (None if fresh else self.engine), list(self.class_names), self.val_slices

        def make_engine():  # worker thread: label files are read here
            return cohort_engine(cohort, paintings, names, config, engine, val_slices=val_slices)

        self.sessions.autosave(force=True)
        self.message.emit(f"Training one model on the cohort: {len(cohort.members)} volumes, "
                          f"{len(paintings)} painted here" + (f"; up to {val_slices} labeled slice(s) held out "
                                                              "for validation." if val_slices else "."))
        self._launch(TrainingJob(make_engine, 1, (1, 1), str(self.sessions.folder / "checkpoints"), previews=False),
                     config.total_iters, review=False)
        return True

    def current_engine(self) -> Any:
        """The engine whose Match model answers now: the running job's (once built), else the last one."""
        running = self.job.engine if self.job is not None else None
        return running if running is not None else self.engine

    def update_previews(self) -> bool:
        """Recompute pseudo-labels, confidence and prompts of every slice with the current models."""
        if self.engine is None:
            show_warning("There is no model yet: train one (Start) or load one in the Train dock.")
            return False
        if self.job is not None:
            show_warning("A run is going; its pseudo-labels appear as it trains.")
            return False
        if self.cohort is not None:  # the engine's slices are the cohort's, not the shown volume's
            show_warning("Pseudo-labels are not shown for a cohort yet; use Predict all and export in the Cohort dock.")
            return False
        engine = self.engine
        self._launch(TrainingJob(lambda: engine, self.num_slices(), self.slice_hw(), None, run=False), 0)
        return True

    def _launch(self, job: TrainingJob, total: int, review: bool = True) -> None:
        # Create the review layers now, while the user expects a moment's wait: their first creation
        # costs napari imports and widgets, which must not land in the middle of a run.
        if review:
            self.review.ensure_layers()
        self.job = job
        job.event.connect(self._on_job_event)
        job.done.connect(self._on_job_done)
        if total:
            self._pbar = progress(total=total, desc="SAM-Match training")
        self._set_state("running")
        job.start()

    def pause(self) -> None:
        if self.job is not None and self.state == "running":
            self.job.pause()
            self._set_state("paused")

    def resume(self) -> None:
        if self.job is not None and self.state == "paused":
            self.job.resume()
            self._set_state("running")

    def stop(self) -> None:
        if self.job is not None and self.state in ("running", "paused"):
            self.job.stop()
            self._set_state("stopping")

    def _set_state(self, state: str) -> None:
        self.state = state
        self.run_state_changed.emit(state)

    def _on_job_event(self, event: ev.Event) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            self._handle_event(event)
        finally:
            self.handler_ms.append((event.kind, (time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3))

    def _handle_event(self, event: ev.Event) -> None:
        if event.kind == ev.PSEUDO_LABELS:
            self.review.apply_preview(event.data)
        elif event.kind == ev.PROGRESS and self._pbar is not None:
            delta = event.global_iteration - self._pbar.n
            if delta > 0:
                self._pbar.set_description(f"SAM-Match {event.stage}")
                self._pbar.update(delta)
        elif event.kind == ev.LOG and event.data.get("level") == "warning":
            show_warning(event.message)  # e.g. a checkpoint not written (full disk): training goes on
        if event.kind in (ev.CHECKPOINT, ev.STOPPED) and event.data.get("path"):
            self.sessions.checkpoint_path = Path(event.data["path"])
            self.sessions.mark_dirty("checkpoint")
        self.engine_event.emit(event)

    def _on_job_done(self, result: dict) -> None:
        job, self.job = self.job, None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if result.get("engine") is not None:
            self.engine = result["engine"]
            self.engine_changed.emit()
        self._set_state("idle")
        if result.get("error"):
            notify_error(result["error"])
            self.message.emit("Error: " + result["error"])
        else:
            summary = result.get("summary") or {}
            if job is not None and job.do_run:
                show_info("Training stopped; a checkpoint was saved." if summary.get("stopped") else "Training finished.")
        self.sessions.mark_dirty("checkpoint")
        self.sessions.autosave()

    def stop_job(self) -> None:
        """Ask a running job to end within one step (used when napari quits)."""
        if self.job is not None:
            self.job.stop()


__all__ = ["Controller", "finish_workers", "get_controller", "unwrap"]
