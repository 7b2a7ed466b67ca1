"""The docks with the real bundled LiteMedSAM (slow: its image encoder runs on every slice once).

Also the box-edit latency the issue asks for: moving a box re-runs only SAM's decoder on the cached
embedding of that slice (target: under 300 ms on a laptop CPU). The measured values are printed.
"""

from __future__ import annotations

import numpy as np
import pytest

from gui_helpers import TIMEOUT_MS, add_sample, open_docks, wait_idle

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _home(samatch_home):
    """Every test here writes its sessions under its own folder."""


def test_litemedsam_run_and_box_edit_latency(make_napari_viewer_proxy, qtbot, record_property):
    viewer = make_napari_viewer_proxy()
    add_sample(viewer)
    data, train, review = open_docks(viewer)
    ctl, rev = data.ctl, review.review
    assert train.backend_combo.currentData() == "litemedsam"  # the default
    train.set_config(preset="quick", size=96, warmup_iters=60, sam_iters=10, joint_iters=10, batch_labeled=3,
                     batch_unlabeled=2, eval_every=0, checkpoint_every=0, device="cpu")
    assert train.start()
    wait_idle(qtbot, ctl)
    assert "Error" not in train.log.toPlainText()
    assert len(rev.scores) == 12 and "boxes" in rev.layers

    k = next(i for i in range(12) if i not in ctl.labeled_slices())
    boxes = rev.layers["boxes"]
    review.class_combo.setCurrentIndex(2)
    for attempt in range(3):  # the first edit may still encode the slice if no preview did
        with qtbot.waitSignal(rev.refined, timeout=TIMEOUT_MS):
            boxes.add_rectangles(np.array([[k, 60, 70], [k, 60, 110], [k, 100, 110], [k, 100, 70]], float)
                                 + np.array([0, attempt, attempt]))
    latencies = rev.latencies_ms
    record_property("box_edit_latency_ms", latencies)
    print(f"\nbox-edit latency (ms, edit -> layer updated): {[round(x) for x in latencies]}, "
          f"of which SAM computed {[round(x) for x in rev.compute_ms]}")
    assert min(latencies) < 5000  # generous: the 300 ms target is reported, not asserted, on shared CI
