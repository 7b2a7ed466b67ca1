"""benchmarks/warmup_probe.py's arithmetic: its weighted Dice and what its summary says a seed choice buys.

The probe's training runs are benchmarks (docs/benchmarks.md, "What decides a run's spread"); here only the
numbers it derives from them, on made-up rows whose answers are known.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import warmup_probe as wp  # noqa: E402


def test_dice_is_the_mean_over_present_structures_and_honours_weights() -> None:
    a = np.zeros((1, 4, 4), np.uint8)
    b = a.copy()
    a[0, :2] = 1  # 8 pixels of class 1
    b[0, :1] = 1  # 4 of them
    assert wp.dice(a, b) == pytest.approx(2 * 4 / 12)  # class 1 only: 2 and 3 are absent from both
    weight = np.zeros((1, 4, 4), np.float32)
    weight[0, :1] = 1.0  # only the rows both call class 1 count
    assert wp.dice(a, b, weight) == pytest.approx(1.0)
    assert np.isnan(wp.dice(np.zeros((1, 2, 2)), np.zeros((1, 2, 2))))


def rows(answers: list[list[float]], warm_match: list[list[float]]) -> list[dict]:
    out = []
    for v, (ans, wm) in enumerate(zip(answers, warm_match)):
        for seed, (a, m) in enumerate(zip(ans, wm)):
            sig = {"match": m, "fit": 1.0 - m, "prior": 0.5}
            out.append({"volume": f"v{v}", "k": 5, "seed": seed, "answer": a, "warmup": sig, "end": sig})
    return out


def test_summary_reports_the_spread_and_what_keeping_a_ranked_seed_buys() -> None:
    answers = [[0.80, 0.90, 0.85], [0.70, 0.60, 0.65]]
    lines = wp.summary(rows(answers, warm_match=answers))  # the warm-up's Dice ranks the seeds as the answers
    assert lines[0].startswith("k = 5, 2 volumes x 3 seeds: answer 0.7500, mean range 0.1000")
    assert "best seed per volume (hidden labels) +0.0500" in lines[0]
    match = next(line for line in lines if line.strip().startswith("warmup match"))
    assert "r with the answer +1.00" in match and "keeping the seed it ranks first +0.0500" in match
    fit = next(line for line in lines if line.strip().startswith("warmup fit"))  # ranks them the wrong way round
    assert "r with the answer -1.00" in fit and "keeping the seed it ranks first -0.0500" in fit


def test_summary_skips_volumes_with_one_seed() -> None:
    assert wp.summary(rows([[0.8]], [[0.7]])) == []
