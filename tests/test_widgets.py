"""The napari docks, driven the way a user drives them (under Xvfb via pytest-xvfb).

Training here uses a tiny randomly initialised segment-anything model through the 'SAM / MedSAM
checkpoint' backend and a few 64-px steps, so a whole run takes seconds on a CI runner. The real
LiteMedSAM goes through the same code (``test_widgets_litemedsam.py``, marked slow).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gui_helpers import TIMEOUT_MS, MachineLoad, add_sample, heartbeat, open_docks, tiny_settings, wait_idle
from napari_samatch._widgets._review import NAMES

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def _home(samatch_home):
    """Every test here writes its sessions under its own folder."""


@pytest.fixture
def docks(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    add_sample(viewer)
    data, train, review = open_docks(viewer)
    yield viewer, data, train, review
    ctl = data.ctl
    if ctl.job is not None:
        ctl.stop()


def last_notification() -> str:
    from napari.utils.notifications import notification_manager

    return notification_manager.records[-1].message if notification_manager.records else ""


def run_tiny(qtbot, train, tiny_sam, fresh=True, **kw) -> None:
    train.set_config(**tiny_settings(tiny_sam, **kw))
    assert train.start(fresh=fresh)
    wait_idle(qtbot, train.ctl)


def inject_engine(qtbot, ctl, tiny_sam):
    """An untrained engine on the current data, then previews of every slice (no training: fast)."""
    from napari_samatch.core.config import preset
    from napari_samatch.core.engine.engine import Engine
    from napari_samatch.core.engine.rounds import training_data

    s = tiny_settings(tiny_sam)
    cfg = preset("quick", size=64, sam_backend="sam", sam_checkpoint=s["sam_checkpoint"], device="cpu",
                 warmup_iters=0, sam_iters=1, joint_iters=0, prompt_thresh=0.3)
    names = ctl.effective_class_names()
    data = training_data([ctl.volume()], ctl.axis, names)
    ctl.engine = Engine(data, cfg.replace(num_classes=len(names), class_names=names))
    assert ctl.update_previews()
    wait_idle(qtbot, ctl)


# ------------------------------------------------------------------------------------------ data
def test_docks_find_sample_and_labeled_slices(docks, qtbot):
    viewer, data, train, review = docks
    ctl = data.ctl
    assert train.ctl is ctl is review.ctl  # one controller per viewer, whichever dock came first
    assert ctl.image_layer.name == "cardiac phantom" and ctl.labels_layer.name == "labels"
    assert ctl.labeled_slices() == [1, 6, 9]
    assert "3 of 12 slices labeled" in data.labeled_label.text()
    assert ctl.class_names == ["background", "RV", "Myo", "LV"]
    assert data.axis_spin.isEnabled() and data.axis_spin.maximum() == 2
    assert train.device_combo.itemData(0) == "auto" and train.device_combo.findData("cpu") >= 0

    # painting a slice makes it count as labeled (debounced)
    labels = ctl.labels_layer
    labels.paint((3, 80, 80), 2)
    qtbot.waitUntil(lambda: 3 in ctl.labeled_slices(), timeout=3000)
    assert data.labeled_list.count() == 4

    # the slice axis changes what a slice is
    data.axis_spin.setValue(1)
    assert ctl.axis == 1 and ctl.num_slices() == 160 and ctl.labeled_slices()

    # a new labels layer has the image's shape and no labeled slice: Start is refused with a sentence
    data.new_labels_btn.click()
    assert ctl.labels_layer.data.shape == (12, 160, 160) and ctl.labels_layer is not labels
    assert ctl.labeled_slices() == [] and "No slice is labeled" in data.labeled_label.text()
    assert not train.start()
    assert ctl.job is None and "No slice is labeled" in last_notification()

    data.classes_edit.setText("background, RV, Myo, LV, extra")
    data.classes_edit.editingFinished.emit()
    assert ctl.class_names[-1] == "extra" and review.class_combo.count() == 4


def test_2d_image(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.random.default_rng(0).random((40, 50)).astype(np.float32), name="photo")
    data, _, _ = open_docks(viewer)
    ctl = data.ctl
    assert ctl.num_slices() == 1 and not data.axis_spin.isEnabled()
    data.new_labels_btn.click()
    ctl.labels_layer.paint((10, 10), 1)
    ctl.refresh_labeled()
    assert ctl.labeled_slices() == [0]


# ------------------------------------------------------------------------------------------ training
def test_full_run_review_edit_accept_and_next_round(docks, qtbot, tiny_sam):
    viewer, data, train, review = docks
    ctl, rev = data.ctl, review.review
    run_tiny(qtbot, train, tiny_sam)
    for name in NAMES.values():
        assert name in viewer.layers, name
    pseudo, conf = rev.layers["pseudo"], rev.layers["confidence"]
    assert pseudo.data.shape == conf.data.shape == (12, 160, 160)
    assert sorted(rev.scores) == list(range(12)) and review.table.rowCount() == 12
    assert train.progress.format() == "done" and "Stage warmup" in train.log.toPlainText()
    assert train.loss_plot.series and ctl.sessions.checkpoint_path.is_file()
    assert train.next_btn.isEnabled() and train.export_model_btn.isEnabled()
    # the checkbox and the layer list's eye icon show the confidence layer alike
    review.show_conf.setChecked(True)
    assert conf.visible
    conf.visible = False
    assert not review.show_conf.isChecked()
    # the main thread spends little on a typical engine event (the stall bound is the heartbeat test's)
    walls = sorted(wall for _, wall, _ in ctl.handler_ms)
    assert walls[len(walls) // 2] < 50, sorted(ctl.handler_ms, key=lambda h: -h[1])[:5]

    # draw a box on an unlabeled slice: SAM re-runs for that slice only
    k = 4
    review.class_combo.setCurrentIndex(2)  # class 3, LV
    before = np.array(pseudo.data[k])
    boxes = rev.layers["boxes"]
    n_before = len(boxes.data)
    with qtbot.waitSignal(rev.refined, timeout=TIMEOUT_MS) as sig:
        boxes.add_rectangles(np.array([[k, 60, 70], [k, 60, 110], [k, 100, 110], [k, 100, 70]], float))
    assert sig.args[0] == k and k in rev.corrected and k in rev.prompt_edited
    assert int(boxes.features["class"].iloc[-1]) == 3 and len(boxes.data) == n_before + 1
    refined_once = np.array(pseudo.data[k])

    # move that box (the layer's data changes, as after a drag): refined again
    moved = list(boxes.data)
    moved[-1] = moved[-1] + np.array([0, 15, -10])
    with qtbot.waitSignal(rev.refined, timeout=TIMEOUT_MS) as sig:
        boxes.data = moved
    assert sig.args[0] == k and len(rev.latencies_ms) == len(rev.compute_ms) == 2
    assert all(0 < c <= t for c, t in zip(rev.compute_ms, rev.latencies_ms))  # SAM's share of each wait
    # napari's undo takes the refinement back, one step at a time
    pseudo.undo()
    np.testing.assert_array_equal(pseudo.data[k], refined_once)
    pseudo.undo()
    np.testing.assert_array_equal(pseudo.data[k], before)

    # a negative point is a prompt too
    review.polarity_combo.setCurrentIndex(1)
    with qtbot.waitSignal(rev.refined, timeout=TIMEOUT_MS):
        rev.layers["points"].add([k, 80, 90])
    assert int(rev.layers["points"].features["label"].iloc[-1]) == 0

    # correct by painting, accept: the user's labels get the slice (one undo step), it counts as labeled
    pseudo.paint((k, 80, 90), 3)
    assert k in rev.corrected
    ctl.go_to_slice(k)
    assert ctl.current_slice() == k
    review.accept_btn.click()
    user = ctl.labels_layer
    np.testing.assert_array_equal(user.data[k], pseudo.data[k])
    assert k in ctl.labeled_slices() and k in rev.accepted
    user.undo()
    assert not user.data[k].any()
    user.redo()
    np.testing.assert_array_equal(user.data[k], pseudo.data[k])
    ctl.refresh_labeled()

    # next round: same models, grown labeled set; the corrected slice keeps the user's version
    engine = ctl.engine
    corrected = np.array(pseudo.data[k])
    train.next_btn.click()
    wait_idle(qtbot, ctl)
    assert ctl.engine is engine and engine.data.labels[k] is not None
    assert "Next round" in train.log.toPlainText()
    np.testing.assert_array_equal(pseudo.data[k], corrected)


def test_pause_resume_stop_mid_run(docks, qtbot, tiny_sam):
    viewer, data, train, review = docks
    ctl = data.ctl
    train.set_config(**tiny_settings(tiny_sam, warmup_iters=400, sam_iters=0, joint_iters=0, checkpoint_every=0))
    assert train.start()
    qtbot.waitUntil(lambda: train.progress.value() >= 1, timeout=TIMEOUT_MS)
    train.pause_btn.click()
    assert ctl.state == "paused" and train.pause_btn.text() == "Resume"
    qtbot.waitUntil(lambda: "Paused" in train.log.toPlainText(), timeout=TIMEOUT_MS)
    train.pause_btn.click()
    assert ctl.state == "running"
    train.stop_btn.click()
    wait_idle(qtbot, ctl)
    assert "Stopped" in train.log.toPlainText()
    assert ctl.engine is not None and ctl.engine.stage_iter < 400
    assert ctl.sessions.checkpoint_path is not None and ctl.sessions.checkpoint_path.is_file()
    assert train.start_btn.isEnabled() and not train.stop_btn.isEnabled()


def test_progress_events_are_throttled(docks, qtbot, tiny_sam):
    from napari_samatch.core.engine import events as ev

    viewer, data, train, review = docks
    seen = []
    data.ctl.engine_event.connect(seen.append)
    run_tiny(qtbot, train, tiny_sam, warmup_iters=30, sam_iters=0, joint_iters=0, warmup_method="supervised")
    progress = [e for e in seen if e.kind == ev.PROGRESS]
    points = [p for e in progress for p in e.data["points"]]
    assert [p[0] for p in points] == list(range(1, 31))  # every step's losses reach the curves
    assert len(progress) <= 30


def test_schedule_line_follows_edits_and_unknown_settings_are_refused(docks):
    viewer, data, train, review = docks
    train.set_config(preset="quick")
    assert "(edited)" not in train.preset_label.text()
    train.set_config(warmup_iters=7, joint_iters=5, size=64)
    text = train.preset_label.text()
    assert text.startswith("7 warm-up + ") and "5 joint iterations at 64 px (edited)" in text
    assert train.config().warmup_iters == 7
    with pytest.raises(ValueError, match="Unknown Train-dock setting"):
        train.set_config(warmup_itres=3)
    with pytest.raises(ValueError, match="choose one of"):
        train.set_config(method="nnunet")


# ------------------------------------------------------------------------------------------ files
def test_export_masks_and_models_and_read_back(docks, qtbot, tiny_sam, tmp_path):
    import tifffile
    from PIL import Image

    from napari_samatch.core.data.io import read_volume

    viewer, data, train, review = docks
    ctl = data.ctl
    affine = np.array([[0, 0, 1.5, 10], [0, 1.5, 0, -5], [8, 0, 0, 2], [0, 0, 0, 1]], float)
    ctl.image_layer.metadata["affine"] = affine
    inject_engine(qtbot, ctl, tiny_sam)
    expected = ctl.sessions.final_mask()
    np.testing.assert_array_equal(expected[6], ctl.labels_layer.data[6])  # labeled slices: the user's

    files = review.export(str(tmp_path / "mask.nii.gz"))
    vol = read_volume(files[0])
    np.testing.assert_array_equal(vol.image.astype(np.uint8), expected)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    tif = review.export(str(tmp_path / "mask.tif"))
    np.testing.assert_array_equal(tifffile.imread(tif[0]), expected)
    pngs = review.export(str(tmp_path / "pngs"))
    assert len(pngs) == 12
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[6])), expected[6])

    model = ctl.sessions.export_model(tmp_path / "model.pt")
    old = ctl.engine
    assert train.load_model(str(model))
    wait_idle(qtbot, ctl)
    assert ctl.engine is not old
    for a, b in zip(old.unet.state_dict().values(), ctl.engine.unet.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())


def test_session_save_reopen_and_autosave(make_napari_viewer_proxy, qtbot, tiny_sam, tmp_path):
    viewer = make_napari_viewer_proxy()
    add_sample(viewer)
    data, train, review = open_docks(viewer)
    ctl, rev = data.ctl, review.review
    inject_engine(qtbot, ctl, tiny_sam)
    ctl.labels_layer.paint((4, 50, 50), 1)
    rev.layers["pseudo"].paint((5, 70, 70), 2)
    rev.accept([5])
    ckpt = ctl.engine.save(tmp_path / "ckpt" / "last.pt")
    ctl.sessions.checkpoint_path = ckpt
    folder = tmp_path / "session"
    ctl.sessions.save(folder, block=True)
    labels, pseudo = np.array(ctl.labels_layer.data), np.array(rev.layers["pseudo"].data)
    table = rev.table.to_dict()
    viewer.close()

    viewer2 = make_napari_viewer_proxy()
    data2, train2, review2 = open_docks(viewer2)
    ctl2, rev2 = data2.ctl, review2.review
    assert ctl2 is not ctl
    assert data2.open_session(folder)
    np.testing.assert_array_equal(ctl2.labels_layer.data, labels)
    np.testing.assert_array_equal(rev2.layers["pseudo"].data, pseudo)
    assert ctl2.image_layer.data.shape == (12, 160, 160)
    assert 5 in rev2.accepted and 5 in rev2.corrected and {4, 5} <= set(ctl2.labeled_slices())
    for key, value in table.items():
        np.testing.assert_allclose(rev2.table.to_dict()[key], value)
    wait_idle(qtbot, ctl2)  # the model loads in a worker
    assert ctl2.engine is not None and ctl2.sessions.folder == folder

    # painting is autosaved a few seconds later into the same session
    ctl2.sessions.soon.setInterval(50)
    from napari_samatch.core.data.session import load_session

    ctl2.labels_layer.paint((7, 40, 40), 3)

    def painted_stroke_saved() -> bool:
        try:
            return load_session(folder).labels[7, 40, 40] == 3
        except Exception:  # noqa: BLE001 - read while a save replaces the files: try again
            return False

    qtbot.waitUntil(painted_stroke_saved, timeout=TIMEOUT_MS)


# ------------------------------------------------------------------------------------------ responsiveness
def test_ui_never_freezes_during_training(docks, qtbot, tiny_sam, record_property):
    """A heartbeat on the main thread during a short training: the largest stall stays under 100 ms.

    The same heartbeat is first measured idle: where the machine itself stalls a Qt timer (a CPU shared
    by many jobs), wall-clock gaps say nothing about this plugin, and only the main-thread time spent
    per engine event is asserted.
    """
    import gc
    import time

    viewer, data, train, review = docks
    ctl = data.ctl
    end = time.perf_counter() + 2.0
    idle = heartbeat(qtbot, lambda: time.perf_counter() > end, 5000)
    train.set_config(**tiny_settings(tiny_sam, warmup_iters=12, sam_iters=2, joint_iters=6))
    load = MachineLoad()
    assert train.start()
    frozen = gc.get_freeze_count()  # the run froze the heap: no full collection stalls it (_widgets/_heap.py)
    busy = heartbeat(qtbot, lambda: ctl.job is None and ctl.state == "idle", TIMEOUT_MS)
    assert frozen > 10_000 and gc.get_freeze_count() == 0  # and the run's end thawed it
    handler = max(wall for _, wall, _ in ctl.handler_ms)
    stall, idle_stall = max(busy[1:]), max(idle[1:])
    record_property("heartbeat_max_stall_ms", round(stall, 1))
    record_property("heartbeat_idle_max_ms", round(idle_stall, 1))
    record_property("max_event_handler_ms", round(handler, 1))
    print(f"\nheartbeat: max stall {stall:.1f} ms during training ({len(busy)} ticks), "
          f"{idle_stall:.1f} ms idle; slowest engine-event handler {handler:.1f} ms")
    walls = sorted(w for _, w, _ in ctl.handler_ms)
    median, p95 = walls[len(walls) // 2], walls[int(0.95 * (len(walls) - 1))]
    print(f"engine-event handlers: {len(walls)}, median {median:.1f} ms, 95th percentile {p95:.1f} ms")
    assert median < 50  # the typical main-thread cost of an engine event
    # A shared VM stalls even an idle Qt timer (400-650 ms was seen on our CI machine), with a heavy tail
    # that no bound relative to the idle stall survives. The 100 ms bound is asserted where the machine is
    # quiet (gui_helpers.MachineLoad); elsewhere the numbers are recorded and only the median above is asserted.
    if load.quiet(idle_stall):
        assert handler < 100 and stall < 100
    else:
        warnings.warn(f"UI stall bound not checked: the idle machine stalls a Qt timer by {idle_stall:.0f} ms, "
                      f"{load} (during training {stall:.0f} ms, slowest handler {handler:.0f} ms)", stacklevel=1)


def test_heap_stays_frozen_while_any_run_holds_it():
    """Two runs may overlap (a cohort and a volume): the heap thaws when the last one ends, once."""
    import gc

    from napari_samatch._widgets._heap import hold_heap, release_heap

    hold_heap()
    hold_heap()
    assert gc.get_freeze_count() > 0
    release_heap()
    assert gc.get_freeze_count() > 0
    release_heap()
    assert gc.get_freeze_count() == 0
    release_heap()  # an extra release (a job that failed before it started) changes nothing
    hold_heap()
    assert gc.get_freeze_count() > 0
    release_heap()
    assert gc.get_freeze_count() == 0


def test_finished_autosaves_and_runs_release_their_data(docks, qtbot, tiny_sam):
    """A finished worker outlives its run and keeps its arguments. Autosaves and training jobs must not
    keep their snapshots or volumes through it: a 300 x 512 x 512 volume grew the plugin to 17 GB (each
    30 s autosave kept 0.75 GB) before this was fixed (docs/reliability.md)."""
    import gc

    from napari_samatch.core.data.session import SessionState

    viewer, data, train, review = docks
    ctl = data.ctl
    for _ in range(3):
        ctl.sessions.mark_dirty("labels")
        ctl.sessions.save()
        qtbot.waitUntil(lambda: not ctl.sessions._saving, timeout=TIMEOUT_MS)
    train.set_config(**tiny_settings(tiny_sam))
    assert train.start()
    wait_idle(qtbot, ctl)
    qtbot.waitUntil(lambda: not ctl.sessions._saving, timeout=TIMEOUT_MS)
    qtbot.wait(50)
    gc.collect()
    from napari_samatch._widgets._runner import TrainingJob

    assert not [o for o in gc.get_objects() if isinstance(o, SessionState)]
    assert all(o.make_engine is None for o in gc.get_objects() if isinstance(o, TrainingJob))
