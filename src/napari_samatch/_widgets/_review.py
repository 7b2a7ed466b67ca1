"""The review layers: prompts (Shapes, Points), refined pseudo-labels (Labels), confidence (Image).

Pseudo-labels from training fill the layers slice by slice, except on slices the user corrected (painted
on, or re-prompted): those are never overwritten. Moving, resizing, adding or deleting a box, or adding a
point, re-runs SAM for that slice in a worker with the cached embedding; the result is written with
``Labels.data_setitem`` inside ``block_history`` so napari's undo takes it back in one step. Accepting a
slice copies its pseudo-label into the user's labels the same way.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QObject, Signal

from ._layers import PromptTable, preview_to_display, slice_indices, slice_view
from ._notify import notify_error
from ._runner import failure_message

if TYPE_CHECKING:
    from ._controller import Controller

NAMES = {"pseudo": "SAM-Match pseudo-labels", "confidence": "SAM-Match confidence",
         "boxes": "SAM-Match boxes", "points": "SAM-Match points"}
_EDIT_ACTIONS = ("added", "changed", "removed")


class ReviewLayers(QObject):
    """Owns the four review layers of one viewer; see the module docstring."""

    refined = Signal(int, float)  # slice, latency in ms (main thread, after the layer update)

    def __init__(self, controller: "Controller") -> None:
        super().__init__()
        self.ctl = controller
        self.layers: dict[str, Any] = {}
        self.table = PromptTable()
        self.scores: dict[int, float] = {}          # per-slice confidence of the current pseudo-label
        self.corrected: set[int] = set()            # pseudo-label slices the user painted or re-prompted
        self.accepted: set[int] = set()
        self.prompt_edited: set[int] = set()        # slices whose prompts the user changed
        self.new_class = 1
        self.new_label = 1
        self.latencies_ms: list[float] = []  # edit to updated layer, main thread
        self.compute_ms: list[float] = []  # of which the worker computed (the rest is waiting)
        self._updating = False
        self._refine_queue: dict[int, float] = {}   # slice -> time of the edit
        self._refining: int | None = None

    # ------------------------------------------------------------------ layers
    def owns(self, layer) -> bool:
        return any(layer is ly for ly in self.layers.values())

    def forget_removed(self, layers: list) -> None:
        for key, ly in list(self.layers.items()):
            if ly not in layers:
                del self.layers[key]

    def _geometry(self) -> dict[str, Any]:
        img = self.ctl.image_layer
        nd = len(self.ctl.image_shape())
        return {"scale": tuple(img.scale)[:nd], "translate": tuple(img.translate)[:nd]}

    def ensure_layers(self) -> None:
        """Create the review layers if missing (shape and geometry of the chosen image)."""
        v, shape = self.ctl.viewer, self.ctl.image_shape()
        geo = self._geometry()
        created = not all(k in self.layers for k in NAMES)
        self._updating = True
        try:
            if "confidence" not in self.layers:
                self.layers["confidence"] = v.add_image(np.zeros(shape, np.float32), name=NAMES["confidence"],
                                                        colormap="magma", contrast_limits=(0, 1), opacity=0.6,
                                                        blending="additive", visible=False, **geo)
            if "pseudo" not in self.layers:
                ly = v.add_labels(np.zeros(shape, np.uint8), name=NAMES["pseudo"], opacity=0.55, **geo)
                ly.events.paint.connect(self._on_pseudo_paint)
                self.layers["pseudo"] = ly
            if "boxes" not in self.layers:
                ly = v.add_shapes(None, ndim=len(shape), name=NAMES["boxes"], shape_type="rectangle",
                                  edge_width=1.5, face_color="transparent",
                                  features=pd.DataFrame({"class": pd.Series([], dtype=int),
                                                         "score": pd.Series([], dtype=float)}), **geo)
                ly.events.data.connect(self._on_prompt_edit)
                self.layers["boxes"] = ly
            if "points" not in self.layers:
                ly = v.add_points(None, ndim=len(shape), name=NAMES["points"], size=max(3.0, shape[-1] / 40),
                                  border_color="white", border_width=0.1,
                                  features=pd.DataFrame({"class": pd.Series([], dtype=int),
                                                         "label": pd.Series([], dtype=int)}), **geo)
                ly.events.data.connect(self._on_prompt_edit)
                self.layers["points"] = ly
        finally:
            self._updating = False
        if created:
            self.set_new_prompt_kind(self.new_class, self.new_label)

    def class_colour(self, c: int) -> np.ndarray:
        ly = self.layers.get("pseudo")
        if ly is None:
            return np.array([1.0, 1.0, 0.0, 1.0])
        return np.asarray(ly.get_color(int(c)), dtype=float).ravel()[:4]

    def set_new_prompt_kind(self, class_index: int, label: int) -> None:
        """Class (and polarity for points) that boxes and points drawn by the user get."""
        self.new_class, self.new_label = int(class_index), int(label)
        colour = self.class_colour(self.new_class)
        self._set_feature_defaults()
        if "boxes" in self.layers:
            self.layers["boxes"].current_edge_color = colour
        if "points" in self.layers:
            ly = self.layers["points"]
            ly.current_face_color = colour
            ly.current_symbol = "disc" if self.new_label == 1 else "x"

    def _set_feature_defaults(self) -> None:
        if "boxes" in self.layers:
            self.layers["boxes"].feature_defaults = {"class": self.new_class, "score": 1.0}
        if "points" in self.layers:
            self.layers["points"].feature_defaults = {"class": self.new_class, "label": self.new_label}

    # ------------------------------------------------------------------ previews from the engine
    def apply_preview(self, d: dict[str, Any]) -> None:
        """Write a display-frame preview into the layers (main thread), sparing corrected slices."""
        self.ensure_layers()
        axis = self.ctl.axis
        pseudo, conf = self.layers["pseudo"].data, self.layers["confidence"].data
        fresh = []
        for k, i in enumerate(d["indices"]):
            if i in self.corrected:
                continue
            slice_view(pseudo, i, axis)[...] = d["labels"][k]
            slice_view(conf, i, axis)[...] = d["confidence"][k]
            self.scores[i] = d["mean_confidence"][k]
            fresh.append(i)
        keep_user = set(self.prompt_edited)
        new = d["prompts"].select(keep_slices=set(fresh), drop_slices=keep_user)
        self.table = PromptTable.concat(self.table.select(drop_slices=set(fresh) - keep_user), new)
        self._updating = True
        try:
            self.layers["pseudo"].refresh()
            self.layers["confidence"].refresh()
            self._draw_prompts()
        finally:
            self._updating = False
        self.ctl.sessions.mark_dirty("review")
        self.ctl.review_changed.emit()

    def _draw_prompts(self) -> None:
        """Show the prompt table. Events are held while the layers change and each is refreshed once:
        every setter otherwise re-slices the layer and re-checks the viewer's dims (about 3x the time, on
        the main thread, once per preview)."""
        axis, nd = self.ctl.axis, len(self.ctl.image_shape())
        t = self.table
        boxes, points = self.layers["boxes"], self.layers["points"]
        with boxes.events.blocker_all(), points.events.blocker_all():
            boxes.data = []
            if len(t.box):
                boxes.add_rectangles(t.shapes_data(axis, nd), face_color="transparent", edge_width=1.5,
                                     edge_color=[self.class_colour(c) for c in t.box_class])
            boxes.features = pd.DataFrame({"class": t.box_class.astype(int), "score": t.box_score.astype(float)})
            points.data = t.points_data(axis, nd)
            points.features = pd.DataFrame({"class": t.point_class.astype(int), "label": t.point_label.astype(int)})
            if len(t.point):
                points.face_color = [self.class_colour(c) for c in t.point_class]
                points.symbol = ["disc" if lab == 1 else "x" for lab in t.point_label]
            self._set_feature_defaults()  # setting features resets them to the first row
        boxes.refresh()
        points.refresh()

    # ------------------------------------------------------------------ user edits
    def read_table(self) -> PromptTable:
        """The prompts as the layers show them now (after the user's moves and additions)."""
        boxes, points = self.layers["boxes"], self.layers["points"]
        nd = len(self.ctl.image_shape())
        bf, pf = boxes.features, points.features
        return PromptTable.from_layers(
            list(boxes.data), bf["class"].to_numpy() if "class" in bf else np.full(len(boxes.data), self.new_class),
            bf["score"].to_numpy() if "score" in bf else None, np.asarray(points.data).reshape(-1, nd),
            pf["class"].to_numpy() if "class" in pf else np.full(len(points.data), self.new_class),
            pf["label"].to_numpy() if "label" in pf else np.ones(len(points.data), int), self.ctl.axis, nd)

    def _on_prompt_edit(self, event) -> None:
        if self._updating or str(getattr(event, "action", "")) not in _EDIT_ACTIONS:
            return
        t_edit = time.perf_counter()
        new = self.read_table()
        changed = [i for i in sorted(self.table.slices() | new.slices())
                   if self.table.signature(i) != new.signature(i)]
        self.table = new
        for i in changed:
            self.prompt_edited.add(i)
            self._refine_queue[i] = t_edit
        self.ctl.sessions.mark_dirty("review")
        self._next_refine()

    def refine_slice(self, index: int) -> None:
        """Re-run SAM on one slice with the prompts the layers show (also the Review dock's button)."""
        self._refine_queue[int(index)] = time.perf_counter()
        self._next_refine()

    def _next_refine(self) -> None:
        if self._refining is not None or not self._refine_queue:
            return
        engine = self.ctl.engine
        if engine is None:
            self._refine_queue.clear()
            show_warning("Re-running SAM needs a model: train one (Start) or load one in the Train dock.")
            return
        index = next(iter(self._refine_queue))
        t_edit = self._refine_queue.pop(index)
        self._refining = index
        S, hw = engine.config.size, self.ctl.slice_hw()
        prompts = self.table.to_prompts(index, S, hw)

        def work():  # worker thread: SAM decode on the cached embedding, then resize for display
            t0 = time.perf_counter()
            out = engine.refine_with_prompts(index, prompts, native=True)
            d = preview_to_display({"indices": [index], "raw": out["refined"][None], "refined": out["refined"][None],
                                    "confidence": out["confidence"][None]}, S, hw)
            # the worker's own time, apart from waiting (for the thread, or for the engine's lock)
            d["compute_ms"] = (time.perf_counter() - t0) * 1000
            return d

        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(lambda d: self._on_refined(index, d, t_edit))
        worker.errored.connect(lambda exc: self._on_refine_error(exc))
        worker.start()

    def _on_refined(self, index: int, d: dict, t_edit: float) -> None:
        self._refining = None
        self.write_slice("pseudo", index, d["labels"][0])
        slice_view(self.layers["confidence"].data, index, self.ctl.axis)[...] = d["confidence"][0]
        self.layers["confidence"].refresh()
        self.scores[index] = d["mean_confidence"][0]
        self.corrected.add(index)
        ms = (time.perf_counter() - t_edit) * 1000
        self.latencies_ms.append(ms)
        self.compute_ms.append(d["compute_ms"])
        self.ctl.message.emit(f"Slice {index}: SAM re-run with your prompts in {ms:.0f} ms "
                              f"({d['compute_ms']:.0f} ms of it in SAM).")
        self.ctl.sessions.mark_dirty("review")
        self.refined.emit(index, ms)
        self.ctl.review_changed.emit()
        self._next_refine()

    def _on_refine_error(self, exc: BaseException) -> None:
        self._refining = None
        notify_error(failure_message(exc, "Re-running SAM"))
        self._next_refine()

    def write_slice(self, which: str, index: int, values: np.ndarray) -> None:
        """Set one slice of a labels layer through ``data_setitem``: one undo step, undo keeps working."""
        ly = self.ctl.labels_layer if which == "user" else self.layers[which]
        cur = slice_view(ly.data, index, self.ctl.axis)
        diff = cur != values
        if not diff.any():
            return
        idx = slice_indices(diff, index, self.ctl.axis, ly.data.ndim)
        self._updating = True
        try:
            with ly.block_history():
                ly.data_setitem(idx, values[diff].astype(ly.data.dtype))
        finally:
            self._updating = False

    def _on_pseudo_paint(self, event) -> None:
        if self._updating:
            return
        axis, nd = self.ctl.axis, self.layers["pseudo"].data.ndim
        touched: set[int] = set()
        for atom in event.value or []:
            if hasattr(atom, "slice_key"):
                key = atom.slice_key[axis] if nd == 3 else slice(0, 1)
                touched.update(range(key.start or 0, key.stop or 1))
            else:
                touched.update(np.unique(atom[0][axis]).tolist() if nd == 3 else [0])
        self.corrected |= touched
        self.ctl.sessions.mark_dirty("review", soon=True)
        self.ctl.review_changed.emit()

    # ------------------------------------------------------------------ accept
    def accept(self, indices: list[int]) -> list[int]:
        """Copy the (corrected) pseudo-label of these slices into the user's labels; returns those copied."""
        ctl = self.ctl
        if "pseudo" not in self.layers or ctl.labels_layer is None:
            show_warning("There are no pseudo-labels to accept yet; train first, or choose a labels layer.")
            return []
        pseudo = self.layers["pseudo"].data
        done, empty = [], []
        user = ctl.labels_layer
        self._updating = True
        try:
            with user.block_history():  # all accepted slices: one undo step
                for i in indices:
                    src = np.array(slice_view(pseudo, i, ctl.axis))
                    if not src.any():
                        empty.append(i)
                        continue
                    cur = slice_view(user.data, i, ctl.axis)
                    diff = cur != src
                    if diff.any():
                        user.data_setitem(slice_indices(diff, i, ctl.axis, user.data.ndim), src[diff].astype(user.data.dtype))
                    done.append(i)
        finally:
            self._updating = False
        self.accepted |= set(done)
        if empty:
            show_warning(f"Slice(s) {empty} have an empty pseudo-label; nothing was accepted there. "
                         "Paint them, or move a box so SAM finds the structure.")
        if done:
            show_info(f"Accepted slice(s) {done}: they count as labeled in the next round.")
        ctl.refresh_labeled()
        ctl.sessions.mark_dirty("labels")
        ctl.sessions.autosave(force=True)
        ctl.review_changed.emit()
        return done

    def slice_rows(self) -> list[tuple[int, float | None, str]]:
        """(slice, confidence or None, status) for the Review dock's table."""
        labeled = set(self.ctl.labeled_slices())
        rows = []
        for i in range(self.ctl.num_slices()):
            status = ("accepted" if i in self.accepted else "labeled" if i in labeled else
                      "corrected" if i in self.corrected else "pseudo" if i in self.scores else "")
            rows.append((i, self.scores.get(i), status))
        return rows
