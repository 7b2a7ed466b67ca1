"""Starting runs from what the user chose, and drawing their events: the run half of the Controller.

:class:`RunControl` is mixed into the Controller (``_controller.py``), which holds the state it reads (the
chosen layers, axis and classes, the open cohort, the engine, the session manager) and the signals it emits.
What to train on is snapshotted here on the main thread; the core (``core/engine/rounds.py``) builds the
slices, holds out validation slices and makes the engine or its next round, in the worker thread. A single
volume and a cohort take that same path; only what is shown differs (a volume's previews index its slices).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
from napari.utils import progress
from napari.utils.notifications import show_info, show_warning

from ..core.config import RunConfig
from ..core.data.holdout import held_out
from ..core.engine import events as ev
from ..core.engine.rounds import TrainingMember, start_round
from ..core.errors import DataError, SamatchError
from ._notify import notify_error
from ._runner import TrainingJob


class Snapshot(NamedTuple):
    """What to train on, as ``core.engine.rounds.start_round`` takes it."""

    members: list[TrainingMember]
    axis: int
    class_names: list[str]
    paintings: dict[str, np.ndarray]
    labels_complete: bool = False  # the cohort's label files label every slice (CohortState.labels_complete)


class RunControl:
    """Start, pause, resume and stop runs; previews; the engine's events to the docks (main thread)."""

    def training_members(self) -> Snapshot:
        """What a run (or a loaded model) works on, snapshotted now so that painting may go on: a cohort's
        members and paintings, else the shown volume (its labels copied)."""
        if self.cohort is not None:
            self.keep_cohort_painting()  # arrays are replaced, never edited, by keep(): the dict is a snapshot
            return Snapshot(list(self.cohort.members), self.cohort.axis, list(self.class_names),
                            dict(self.cohort.paintings), self.cohort.labels_complete)
        return Snapshot([self.volume()], self.axis, self.effective_class_names(), {})

    def _start_line(self, snap: Snapshot) -> str:
        """The log line of a start; a DataError sentence when nothing is labeled (before any work)."""
        if self.cohort is not None:
            self.cohort.check_labeled(snap.paintings)
            v = self.val_slices
            complete = "; label files complete (every slice labeled)" if snap.labels_complete else ""
            return (f"Training one model on the cohort: {len(snap.members)} volumes, {len(snap.paintings)} painted "
                    "here" + complete + (f"; up to {v} labeled slice(s) held out for validation." if v else "."))
        labeled = snap.members[0].labeled_slices(snap.axis).tolist()
        if not labeled:
            raise DataError("No slice is labeled yet. Paint at least one slice of the labels layer "
                            "(ideally a few well-spread ones), then press Start again.")
        held = held_out(labeled, self.val_slices)  # the core holds out the same ones; named here for the log
        return f"{len(labeled)} labeled slice(s) {labeled}" + (f", {held} held out for validation" if held else "")

    def start(self, config: RunConfig, fresh: bool = True) -> bool:
        """Start a run: fresh models, or the next round from the current ones. False when refused."""
        if self.job is not None:
            show_warning("A run is already going. Stop it first, or wait until it ends.")
            return False
        try:
            snap = self.training_members()
            line = self._start_line(snap)
            if not fresh and self.engine is None:
                raise DataError("There is no model to continue yet. Press Start to train one, or load a model.")
        except SamatchError as exc:
            notify_error(str(exc))
            return False
        # the job's checkpoint folder (in the session), never one left in the settings
        config = config.replace(checkpoint_dir=None)
        engine, val_slices = (None if fresh else self.engine), self.val_slices

        def make_engine():  # worker thread: label files are read here
            return start_round(snap.members, snap.axis, snap.class_names, config, paintings=snap.paintings,
                               val_slices=val_slices, engine=engine, labels_complete=snap.labels_complete)

        self.sessions.autosave(force=True)
        if self.cohort is None:
            line = ("Starting a new run: " if fresh else "Next round from the current models: ") + line + "."
        self.message.emit(line)
        self.launch(self.job_for(make_engine, str(self.sessions.folder / "checkpoints")), config.total_iters)
        return True

    def job_for(self, make_engine: Callable[[], Any], ckpt_dir: str | None, **kw: Any) -> TrainingJob:
        """A job whose previews index the shown volume's slices; a cohort's engine has other slices: none."""
        if self.cohort is not None:
            return TrainingJob(make_engine, 1, (1, 1), ckpt_dir, previews=False, **kw)
        return TrainingJob(make_engine, self.num_slices(), self.slice_hw(), ckpt_dir, **kw)

    def keep_cohort_painting(self) -> None:
        """Hand the shown cohort member's labels layer to the cohort state (kept in memory if painted)."""
        ly = self.labels_layer
        if self.cohort is not None and ly is not None and ly.metadata.get("cohort_member") == self.cohort_shown:
            self.cohort.keep(self.cohort_shown, np.asarray(ly.data))

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
        self.launch(TrainingJob(lambda: engine, self.num_slices(), self.slice_hw(), None, run=False), 0)
        return True

    def launch(self, job: TrainingJob, total: int) -> None:
        """Run ``job`` in its worker; its events and end come back here (main thread)."""
        # Create the review layers now, while the user expects a moment's wait: their first creation
        # costs napari imports and widgets, which must not land in the middle of a run. A cohort has none.
        if self.cohort is None:
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

    def stop_job(self) -> None:
        """Ask a running job to end within one step (used when napari quits)."""
        if self.job is not None:
            self.job.stop()

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
