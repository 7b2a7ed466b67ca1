"""The joint stage's guard of the painted slices (core/engine/painted_fit.py): a class the Match model fit and
then lost sends it back to its last weights that fit; a run it never acts on is the run without it."""

from __future__ import annotations

import pytest
import torch

from napari_samatch.core.data.datasets import phantom
from napari_samatch.core.engine import events as ev
from napari_samatch.core.engine.engine import Engine
from napari_samatch.core.engine.painted_fit import FitGuard, painted_fit
from napari_samatch.core.engine.schedule import PolySchedule
from test_engine import tiny


@pytest.fixture(scope="module")
def fitted():
    """An engine whose Match model fits every painted class of the phantom (supervised, 64 px)."""
    data, _, _ = phantom(shape=(8, 96, 96))
    engine = Engine(data, tiny(data, method="supervised", warmup_method="supervised", warmup_iters=80,
                               sam_iters=0, joint_iters=0, warmup_fit_dice=0.0))
    engine.run()
    return engine


def weights(engine) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in engine.unet.state_dict().items()}


def lose_class(engine, k: int) -> None:
    """The Match model never predicts class ``k`` again: its logit's bias far below the others."""
    with torch.no_grad():
        engine.unet.head.bias[k] = -1e4


def test_a_lost_class_goes_back_to_the_snapshot_at_half_the_rate(fitted):
    engine = fitted
    fit = painted_fit(engine)
    assert set(fit) == {1, 2, 3} and min(fit.values()) > 0.3, fit  # every painted class, fit
    before = weights(engine)
    guard = FitGuard(engine, bar=0.2, every=5)
    schedule = PolySchedule(engine.opt_unet, total=20)
    base = list(schedule.base_lrs)
    lose_class(engine, 2)
    engine.opt_unet.state[next(engine.unet.parameters())]["momentum_buffer"] = torch.zeros(1)
    assert guard.after_step(3, schedule) == ""  # not a checking step: nothing happens
    note = guard.after_step(5, schedule)
    assert "lost" in note and "half the learning rate" in note and "joint stage's start" in note, note
    after = weights(engine)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert schedule.base_lrs == [b / 2 for b in base] and not engine.opt_unet.state
    assert painted_fit(engine)[2] == fit[2] and guard.finish() == ""  # fits again: the stage ends as it is

    lose_class(engine, 3)  # lost after the last check: the stage's end goes back too
    note = guard.finish()
    assert "goes back" in note and engine.config.class_names[3] in note, note
    assert all(torch.equal(before[k], v) for k, v in engine.unet.state_dict().items())


def test_a_class_never_fit_is_not_guarded(fitted):
    engine = fitted
    guard = FitGuard(engine, bar=1.01, every=1)  # no class reaches the bar: nothing to lose
    assert guard.required == []
    lose_class(engine, 1)
    assert guard.after_step(1, PolySchedule(engine.opt_unet, total=5)) == "" and guard.finish() == ""


def test_a_run_the_guard_never_acts_on_is_the_same_run():
    data, _, _ = phantom(shape=(8, 96, 96))

    def run(every):
        seen: list[ev.Event] = []
        config = tiny(data, method="unimatch", warmup_method="supervised", warmup_iters=50, sam_iters=0,
                      joint_iters=6, warmup_fit_dice=0.05, joint_fit_every=every)
        engine = Engine(data, config)
        engine.run(seen.append)
        return weights(engine), [e.message for e in seen if e.kind == ev.LOG and "lost" in e.message]

    guarded, notes = run(2)
    plain, _ = run(0)
    assert notes == []
    assert all(torch.equal(guarded[k], plain[k]) for k in plain)
