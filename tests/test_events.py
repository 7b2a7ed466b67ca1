"""The one-line renderings of engine events that the CLI, the benchmarks and the log share."""

from __future__ import annotations

from napari_samatch.core.engine.events import format_eta, format_metrics


def test_metrics_line_names_what_was_measured():
    assert format_metrics({"val_mean_dice": 0.81234}) == "val mean Dice 0.8123"
    line = format_metrics({"val_mean_dice": 0.5, "pseudo_raw_dice": 0.7, "pseudo_refined_dice": 0.75})
    assert line == "val mean Dice 0.5000 | pseudo-labels raw 0.7000 refined 0.7500"
    assert format_metrics({}) == "val mean Dice nan"  # no validation slices: said, not hidden


def test_eta_is_clock_like_and_never_negative():
    assert format_eta(None) == "--:--"
    assert format_eta(-5) == "00:00"
    assert format_eta(75) == "01:15"
    assert format_eta(3 * 3600 + 61) == "3:01:01"
