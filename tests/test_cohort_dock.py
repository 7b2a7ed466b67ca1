"""The Cohort dock in a real viewer (under Xvfb via pytest-xvfb): open a folder of three small NIfTI volumes, paint
one while switching between them, train one model on all of them with tiny settings, predict and export every
volume; bad folders are one notification."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gui_helpers import tiny_settings, wait_idle

pytestmark = pytest.mark.gui
SHAPE = (6, 48, 48)  # (Z, Y, X)


@pytest.fixture(autouse=True)
def _home(samatch_home):
    """Every test here writes its sessions under its own folder."""


def _affine(k: int) -> np.ndarray:
    return np.array([[1.2, 0, 0, -10.0 - k], [0, 1.2, 0, 5.0], [0, 0, 4.0, 3.0 * k], [0, 0, 0, 1]])


def _save(path: Path, arr: np.ndarray, k: int) -> None:
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.T), _affine(k)), str(path))  # array (z,y,x) -> (x,y,z)


@pytest.fixture
def cohort_dirs(tmp_path) -> tuple[Path, Path]:
    """p1 (a label file painting slices 1 and 4), p2 and p3 (no label file); a bright disc is class 1."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    yy, xx = np.mgrid[:SHAPE[1], :SHAPE[2]]
    for k in (1, 2, 3):
        disc = (yy - 24) ** 2 + (xx - 20 - k) ** 2 < 100
        image = np.random.default_rng(k).normal(0, 0.1, SHAPE).astype(np.float32)
        image[:, disc] += 1.0
        _save(images / f"p{k}.nii.gz", image, k)
        if k == 1:
            lab = np.zeros(SHAPE, np.uint8)
            lab[[1, 4]] = disc
            _save(labels / "p1.nii.gz", lab, k)
    return images, labels


@pytest.fixture
def docks(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    _, cohort = viewer.window.add_plugin_dock_widget("napari-samatch", "Cohort")
    _, train = viewer.window.add_plugin_dock_widget("napari-samatch", "Train")
    yield viewer, cohort, train
    if cohort.ctl.job is not None:
        cohort.ctl.stop()


def last_notification() -> str:
    from napari.utils.notifications import notification_manager

    return notification_manager.records[-1].message if notification_manager.records else ""


def column(dock, c: int) -> list[str]:
    return [dock.table.item(r, c).text() for r in range(dock.table.rowCount())]


def select(qtbot, dock, row: int) -> None:
    """Click a volume and wait until it is shown (it is read in a worker thread)."""
    name = dock.ctl.cohort.names()[row]
    dock.table.selectRow(row)
    qtbot.waitUntil(lambda: dock.loading is None and dock.ctl.cohort_shown == name, timeout=10_000)


def test_open_paint_switch_train_and_export_all(docks, cohort_dirs, qtbot, tiny_sam, tmp_path):
    viewer, dock, train = docks
    ctl = dock.ctl
    assert dock.open_cohort(*cohort_dirs)
    assert column(dock, 0) == ["p1", "p2", "p3"]
    assert column(dock, 1) == ["6 x 48 x 48"] * 3
    assert column(dock, 2) == ["2", "0", "0"]

    # a click shows the volume and its labels, chosen for painting
    select(qtbot, dock, 0)
    assert ctl.cohort_shown == "p1" and ctl.image_layer.name == "p1" and ctl.labels_layer.name == "p1 labels"
    assert ctl.labeled_slices() == [1, 4]
    select(qtbot, dock, 1)
    assert ctl.image_layer.name == "p2" and "p1" not in viewer.layers  # one volume shown at a time
    assert ctl.labels_layer.data.shape == SHAPE and not ctl.labels_layer.data.any()  # no label file: empty
    ctl.labels_layer.paint((3, 24, 22), 1)
    qtbot.waitUntil(lambda: column(dock, 2) == ["2", "1", "0"], timeout=5000)

    # back and forth: p2's painting is kept in memory, p1's label file untouched
    select(qtbot, dock, 0)
    assert ctl.labeled_slices() == [1, 4] and sorted(ctl.cohort.paintings) == ["p2"]
    select(qtbot, dock, 1)
    assert ctl.labeled_slices() == [3] and ctl.labels_layer.data[3, 24, 22] == 1
    assert column(dock, 2) == ["2", "1", "0"]

    # Start in the Train dock trains one model on the whole cohort
    train.set_config(**tiny_settings(tiny_sam))
    assert train.start(fresh=True)
    wait_idle(qtbot, ctl)
    engine = ctl.engine
    assert engine is not None and len(engine.data) == 18
    assert [engine.data.ids[i] for i in engine.data.labeled_indices()] == ["p1_slice_1", "p1_slice_4", "p2_slice_3"]
    assert train.loss_plot.series and ctl.sessions.checkpoint_path.is_file()
    # the cohort engine's slices are not the shown volume's: no pseudo-labels drawn onto it
    assert not ctl.review.layers and not ctl.update_previews()

    # predict and export every volume, in a worker; the masks have their source's grid
    out = tmp_path / "masks"
    assert dock.predict_all(out, overwrite=False)
    qtbot.waitUntil(lambda: dock.export_worker is None, timeout=60_000)
    for k in (1, 2, 3):
        mask, src = nib.load(str(out / f"p{k}.nii.gz")), nib.load(str(cohort_dirs[0] / f"p{k}.nii.gz"))
        assert mask.shape == src.shape and np.allclose(mask.affine, src.affine)
    assert "3 masks written" in last_notification()
    before = (out / "p1.nii.gz").stat().st_mtime_ns
    assert not dock.predict_all(out, overwrite=False)  # existing masks: refused unless the user agrees
    assert "already exists" in last_notification() and (out / "p1.nii.gz").stat().st_mtime_ns == before
    assert not dock.predict_all(cohort_dirs[0], overwrite=True)  # never onto an input
    assert "is the input" in last_notification()


def test_bad_folders_are_one_notification(docks, tmp_path):
    _, dock, _ = docks
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile.txt").write_text("x")
    for folder, words in ((tmp_path / "afile.txt", "is not a folder"), (tmp_path / "empty", "holds no volumes"),
                          (tmp_path / "missing", "is not a folder")):
        assert not dock.open_cohort(folder)
        msg = last_notification()
        assert words in msg and "Traceback" not in msg and msg.count(". ") == 0, msg
        assert dock.ctl.cohort is None and dock.table.rowCount() == 0
    assert not dock.predict_all(tmp_path / "out")
    assert "Open a cohort first" in last_notification()
