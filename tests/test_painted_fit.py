"""The joint stage's guard of the painted slices (core/engine/painted_fit.py): a class the Match model fit, then
lost, and that the answer takes from it alone sends it back to its last weights that fit; a run the guard does
not act on is the run without it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from napari_samatch.core.data.datasets import phantom
from napari_samatch.core.engine import events as ev
from napari_samatch.core.engine import painted_fit as painted_fit_module
from napari_samatch.core.engine.engine import Engine
from napari_samatch.core.engine.painted_fit import FitGuard, painted_fit
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


def test_a_lost_class_goes_back_to_the_last_fitting_weights(fitted):
    engine = fitted
    fit = painted_fit(engine)
    assert set(fit) == {1, 2, 3} and min(fit.values()) > 0.3, fit  # every painted class, fit
    before = weights(engine)
    guard = FitGuard(engine, bar=0.3, every=5)
    assert guard.required == [1, 2, 3] and guard.finish() == ""  # fits: the stage ends as it is
    lose_class(engine, 2)
    guard.after_step(5)  # no longer fits: no snapshot of these weights
    note = guard.finish()
    assert "goes back" in note and "joint stage's start" in note and engine.config.class_names[2] in note, note
    assert all(torch.equal(before[k], v) for k, v in engine.unet.state_dict().items())
    assert painted_fit(engine) == fit


def test_a_class_sam_refines_or_never_fit_is_not_sent_back(fitted, monkeypatch):
    engine = fitted
    before = weights(engine)
    guard = FitGuard(engine, bar=0.3, every=1)
    monkeypatch.setattr(engine, "uses_sam", lambda: True)
    monkeypatch.setattr(engine, "_refiner", SimpleNamespace(trusted={2}))  # SAM answers for class 2
    lose_class(engine, 2)  # the answer still has it, from the prior and SAM
    assert guard.finish() == ""
    engine.unet.load_state_dict(before)
    lose_class(engine, 3)  # the answer takes it from the Match model alone
    assert engine.config.class_names[3] in guard.finish()
    assert FitGuard(engine, bar=1.01, every=1).required == []  # no class reaches the bar: nothing to lose


def guarded_run(every: int) -> tuple[dict[str, torch.Tensor], list[ev.Event]]:
    """A short run whose joint stage is UniMatch's (no SAM: the answer takes every class from the Match model)."""
    data, _, _ = phantom(shape=(8, 96, 96))
    seen: list[ev.Event] = []
    config = tiny(data, method="unimatch", warmup_method="supervised", warmup_iters=50, sam_iters=0,
                  joint_iters=6, warmup_fit_dice=0.05, joint_fit_every=every)
    engine = Engine(data, config)
    engine.run(seen.append)
    return weights(engine), [e for e in seen if e.kind == ev.LOG and "joint stage lost" in e.message]


def test_a_run_the_guard_never_acts_on_is_the_same_run():
    guarded, notes = guarded_run(2)
    plain, _ = guarded_run(0)
    assert notes == []
    assert all(torch.equal(guarded[k], plain[k]) for k in plain)


def test_the_user_is_told_when_the_guard_acts(monkeypatch):
    monkeypatch.setattr(painted_fit_module, "LOST_DICE", 1.01)  # every class the model fit counts as lost
    _, notes = guarded_run(2)
    assert len(notes) == 1 and notes[0].data.get("level") == "warning" and "goes back" in notes[0].message
