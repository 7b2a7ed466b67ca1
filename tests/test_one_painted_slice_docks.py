"""The Data and Train docks with one painted slice: the run goes ahead, and both docks say to paint another."""

from __future__ import annotations

import pytest

from gui_helpers import add_sample, open_docks, tiny_settings, wait_idle


@pytest.fixture(autouse=True)
def _home(samatch_home):
    """Sessions are written under the test's own folder."""


@pytest.fixture
def docks(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    add_sample(viewer)
    data, train, _ = open_docks(viewer)
    yield viewer, data, train
    if data.ctl.job is not None:
        data.ctl.stop()


def test_one_painted_slice_trains_with_a_warning_to_paint_another(docks, qtbot, tiny_sam):
    from napari.utils.notifications import notification_manager

    viewer, data, train = docks
    ctl = data.ctl
    only = ctl.labels_layer.data.copy()
    only[[6, 9]] = 0
    ctl.labels_layer.data = only
    qtbot.waitUntil(lambda: ctl.labeled_slices() == [1], timeout=3000)
    assert "paint a second slice" in data.labeled_label.text()  # said before Start too
    train.set_config(**tiny_settings(tiny_sam, warmup_iters=2, sam_iters=0, joint_iters=1, warmup_method="supervised"))
    assert train.start(fresh=True)
    wait_idle(qtbot, ctl)
    assert "Only one slice is painted" in train.log.toPlainText()
    said = [r.message for r in notification_manager.records]
    assert any("paint a second slice" in m for m in said), said[-3:]
    assert ctl.engine is not None and ctl.engine.stage_index >= 1  # it trained all the same
