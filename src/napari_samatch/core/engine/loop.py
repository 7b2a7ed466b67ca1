"""The training loop of :class:`~.engine.Engine`: its stages in order, events, stop/pause/preview between
steps, validation and periodic checkpoints, and what a stop or an out-of-memory leaves behind.

The engine owns the models and the step (``Engine.step``); this module only sequences them, so that the
order of a run can be read in one place.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..match.averaging import WeightAverage
from . import distributed, faults
from . import events as ev
from .painted_fit import FitGuard, painted_fit
from .schedule import PolySchedule


class StopRequested(Exception):
    """Raised inside the loop when the user pressed Stop; caught by ``run``."""


def run(engine, on_event: ev.EventCallback | None = None, checkpoint_dir: str | Path | None = None) -> dict:
    """Run (or continue) all stages; returns a summary. Events go to ``on_event``."""
    ckpt_dir = Path(checkpoint_dir or engine.config.checkpoint_dir) if (checkpoint_dir or engine.config.checkpoint_dir) else None
    stages = engine.stages()
    total = sum(n for _, n in stages)
    done_before = sum(n for _, n in stages[: engine.stage_index]) + engine.stage_iter
    step_times: list[float] = []
    engine.clear_stop()
    state = {"stage": "", "iter": 0, "n": 0, "global": done_before, "total": total}

    def emit(kind: str, message: str = "", data: dict | None = None) -> None:
        if on_event is None or not distributed.is_main():
            return
        recent = step_times[-20:]
        eta = (state["total"] - state["global"]) * (sum(recent) / len(recent)) if recent else None
        on_event(ev.Event(kind, state["stage"], state["iter"], state["n"], state["global"], state["total"], eta,
                          message, data or {}))

    if done_before == 0 and engine.prior is not None:  # the first usable result, before any training
        every = range(len(engine.data))  # at the slices' own size when they share one (a volume)
        first = engine.prior_preview(every, native=len({engine.data.image_shape(i) for i in every}) == 1)
        emit(ev.PSEUDO_LABELS, "Interpolation between the painted slices", data=first)
    for note in engine.notes:
        emit(ev.LOG, note, {"level": "warning"})
    engine.notes = []
    try:
        while engine.stage_index < len(stages):
            name, n = stages[engine.stage_index]
            state.update(stage=name, n=n, iter=engine.stage_iter)
            if n > 0 and engine.stage_iter < n:
                emit(ev.STAGE, f"Stage {name}: {n} iterations", {"stage": name, "iters": n})
                run_stage(engine, name, n, emit, state, step_times, ckpt_dir)
            engine.stage_index += 1
            engine.stage_iter = 0
        distributed.broadcast_buffers(engine.unet)  # all ranks end equal to what rank 0 saves
        summary = engine.summary(time_s=sum(step_times))
        if ckpt_dir:
            path = faults.final_save(engine, ckpt_dir / "last.pt", stopped=False)
            emit(ev.CHECKPOINT, f"Saved {path}", {"path": str(path)})
        emit(ev.DONE, "Training finished", summary)
        return summary
    except StopRequested:
        path = faults.final_save(engine, ckpt_dir / "last.pt", stopped=True) if ckpt_dir else None
        emit(ev.STOPPED, "Stopped" + (f"; checkpoint {path}" if path else ""), {"path": str(path) if path else None})
        return engine.summary(time_s=sum(step_times), stopped=True)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled; anything else is re-raised
        if not faults.is_out_of_memory(exc):
            raise
    # Out of memory. Handled here, after the except block, so its traceback and the failed step's
    # tensors it holds are already released.
    error, path = faults.out_of_memory(engine, state["stage"], ckpt_dir)
    if path:
        emit(ev.CHECKPOINT, f"Saved {path}", {"path": str(path)})
    emit(ev.ERROR, str(error))
    raise error

def run_stage(engine, name: str, n: int, emit, state: dict, step_times: list[float], ckpt_dir: Path | None) -> None:
    c = engine.config
    sched_unet = PolySchedule(engine.opt_unet, total=n, power=c.poly_power) if name != "sam" else None
    if name == "sam" or (name == "joint" and c.method == "samatch"):
        opt_sam = engine.sam_optimizer()
        sched_sam = PolySchedule(opt_sam, total=n, power=c.poly_power)
    else:
        sched_sam = None
    samatch = name == "joint" and c.method == "samatch"
    calibrate = (lambda: emit(ev.LOG, engine.calibrate_sam())) if samatch and c.sam_trust_dice > 0 else None
    if calibrate:
        calibrate()
    # Not for a run's only painted slice: there the joint stage moves the model far from its warm-up, and the
    # mean kept too much of the start (ACDC, k = 1: 0.616 against 0.660 with the last weights)
    average = c.joint_average and len(engine.labeled_idx) > 1
    if name == "joint" and (engine.stage_iter == 0 or engine.average is None or not average):
        engine.average = WeightAverage() if average else None  # resumed: its checkpoint's mean goes on
    start = 0  # where the current learning-rate decay began (a refit of the warm-up restarts it)
    refits = 0
    guard = (FitGuard(engine, c.warmup_fit_dice, c.joint_fit_every)
             if name == "joint" and c.joint_fit_every > 0 and c.warmup_fit_dice > 0 else None)
    while True:
        if engine.stage_iter >= n:
            extra = refit_warmup(engine, name, n, refits, emit)
            if not extra:
                break
            start, n, refits = n, n + extra, refits + 1
            state["n"] = n
            state["total"] += extra
            sched_unet = PolySchedule(engine.opt_unet, total=extra, power=c.poly_power)
        engine.between_steps(emit, name)
        t0 = time.perf_counter()
        with engine.lock:
            if sched_unet:
                sched_unet.step(engine.stage_iter - start)
            if sched_sam:
                sched_sam.step(engine.stage_iter)
            logs = engine.step(name)
            if name == "joint" and engine.average is not None:
                engine.average.add(engine.unet)
        step_times.append(time.perf_counter() - t0)
        logs = distributed.mean_logs(logs)
        engine.stage_iter += 1
        state["iter"] = engine.stage_iter
        state["global"] += 1
        logs["lr"] = engine.opt_unet.param_groups[0]["lr"]
        emit(ev.PROGRESS, data={"losses": logs, "step_s": step_times[-1]})
        it = engine.stage_iter
        if guard is not None:
            guard.after_step(it)
        if engine.validator and c.eval_every and (it % c.eval_every == 0 or it == n) and name != "sam":
            if calibrate:  # SAM has been learning: which classes it may refine can change
                calibrate()
            validate(engine, emit, samatch, name, it, state["global"])
        if ckpt_dir and c.checkpoint_every and it % c.checkpoint_every == 0 and it < n:
            faults.periodic_save(engine, ckpt_dir / "last.pt", state["global"], emit)  # warns on a full disk
    if name == "joint" and engine.average is not None:
        finish_average(engine, emit, state)
    if guard is not None and (note := guard.finish()):
        emit(ev.LOG, note, {"level": "warning"})


def finish_average(engine, emit, state: dict) -> None:
    """The Match model becomes the mean of its weights over the joint stage (core/match/averaging.py),
    validated again, so that the history's last entry and the best weights know it."""
    with engine.lock:
        engine.average.apply(engine.unet)
    count, engine.average = engine.average.count, None
    emit(ev.LOG, f"The Match model is the mean of its weights over the {count} joint steps")
    if engine.validator and engine.config.eval_every:
        validate(engine, emit, engine.config.method == "samatch", "joint average", state["iter"], state["global"])


def validate(engine, emit, with_pseudo: bool, stage: str, iteration: int, global_iteration: int) -> None:
    """Score the Match model on the held-out slices; into the history, the best weights and an event."""
    metrics = engine.validator.evaluate(with_pseudo=with_pseudo)
    metrics.update(stage=stage, iteration=iteration, global_iteration=global_iteration)
    engine.history.append(metrics)
    engine.track_best(metrics)
    emit(ev.METRICS, data=metrics)


MAX_REFITS = 2
MIN_REFIT_WARMUP = 50  # a shorter warm-up is a deliberate quick look (a preview, a test): not refitted


def refit_warmup(engine, name: str, n: int, refits: int, emit) -> int:
    """Extra warm-up steps when the Match model still misses a painted class on the painted slices (0: none).

    A small structure can still be unlearned when the warm-up ends (ACDC's RV on 3 of 11 volumes checked at
    k = 5); SAM is then never prompted for it. Half the warm-up again, at most ``MAX_REFITS`` times."""
    c = engine.config
    if name != "warmup" or c.warmup_fit_dice <= 0 or refits >= MAX_REFITS or c.warmup_iters < MIN_REFIT_WARMUP:
        return 0
    dice = painted_fit(engine)
    unfit = [k for k, d in dice.items() if d < c.warmup_fit_dice]
    if not unfit:
        return 0
    extra = c.warmup_iters // 2
    names = ", ".join(f"{c.class_names[k]} {dice[k]:.2f}" for k in unfit)
    emit(ev.LOG, f"The Match model still misses {names} (Dice on the painted slices); warming up {extra} more steps")
    return extra
