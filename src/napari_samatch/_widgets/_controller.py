"""The state the docks share for one viewer: what the user chose (layers, axis, classes, labeled slices), the
engine and its run.

The docks are thin views of one :class:`Controller` per viewer (``get_controller``). Starting and drawing runs
is its other half, ``_runs.RunControl``. It never computes on the main thread: training, previews, refinement
and saving go to worker threads, and their results come back through Qt signals.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils import progress
from qtpy.QtCore import QObject, QTimer, Signal

from ..core.data.cohort_state import CohortState
from ..core.data.slices import default_class_names
from ..core.data.volume import Volume
from ..core.errors import DataError
from ._layers import slice_shape
from ._registry import CONTROLLERS
from ._runner import TrainingJob
from ._runs import RunControl
from ._shutdown import finish_on_quit, finish_workers
from ._slicing import volume_from_layers

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


class Controller(QObject, RunControl):
    """Shared state; see the module docstring. Signals are emitted on the main thread only; runs: ``_runs.py``."""

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


__all__ = ["Controller", "finish_workers", "get_controller", "unwrap"]
