"""Poly learning-rate schedule: real, non-negative, no overrun, resumable."""

from __future__ import annotations

import math

import pytest
import torch

from napari_samatch.core.engine.schedule import PolySchedule, poly_lr
from napari_samatch.core.errors import ConfigError


def test_poly_monotone_real_and_clamped():
    total = 50
    lrs = [poly_lr(0.01, i, total) for i in range(-3, total + 20)]
    assert all(isinstance(v, float) and not isinstance(v, complex) for v in lrs)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert poly_lr(0.01, 0, total) == pytest.approx(0.01)
    last = poly_lr(0.01, total - 1, total)
    assert last > 0 and last == pytest.approx(0.01 * (1 / total) ** 0.9)
    assert poly_lr(0.01, total, total) == last and poly_lr(0.01, 10 * total, total) == last  # no overrun
    assert all(math.isfinite(v) and v >= 0 for v in lrs)
    assert poly_lr(0.01, 0, 1) == pytest.approx(0.01)
    for bad in (dict(total=0), dict(total=5, power=-1.0)):
        with pytest.raises(ConfigError):
            poly_lr(0.01, 0, **bad)


def make_opt():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    return torch.optim.SGD(
        [{"params": a.parameters()}, {"params": b.parameters(), "lr_mult": 10.0}], lr=0.01, momentum=0.9
    )


def test_schedule_sets_group_lrs_with_multiplier():
    opt = make_opt()
    sched = PolySchedule(opt, total=20)
    assert sched.get_last_lr() == pytest.approx([0.01, 0.1])
    sched.step(19)
    assert sched.get_last_lr() == pytest.approx([poly_lr(0.01, 19, 20), 10 * poly_lr(0.01, 19, 20)])
    sched.step(25)  # past the end: stays at the last positive value
    assert sched.get_last_lr()[0] == pytest.approx(poly_lr(0.01, 19, 20)) and sched.get_last_lr()[0] > 0
    assert PolySchedule(make_opt(), 20, base_lr=0.5).get_last_lr() == pytest.approx([0.5, 5.0])


def test_resume_equals_continuous():
    total, stop = 30, 12
    cont_opt = make_opt()
    cont = PolySchedule(cont_opt, total)
    continuous = [cont.step(i) for i in range(total)]

    opt = make_opt()
    sched = PolySchedule(opt, total)
    first = [sched.step(i) for i in range(stop)]
    state = sched.state_dict()
    opt2 = make_opt()
    for g in opt2.param_groups:
        g["lr"] = 123.0  # whatever the optimizer holds, loading restores the schedule's lrs
    resumed = PolySchedule(opt2, total)
    resumed.load_state_dict(state)
    assert resumed.get_last_lr() == pytest.approx(first[-1])
    rest = [resumed.step() for _ in range(stop, total)]  # step() with no argument advances by one
    assert first + rest == continuous
    with pytest.raises(ConfigError):
        resumed.load_state_dict({"total": 5})
