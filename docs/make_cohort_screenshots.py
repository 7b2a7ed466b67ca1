"""The user guide's Cohort dock screenshots (docs/images/10-cohort-*.png), driven through the dock's own calls.

    xvfb-run -a python docs/make_cohort_screenshots.py

Four phantom volumes (different seeds, so different hearts) are written as NIfTI into a temporary folder, one
of them with a label file holding two painted slices, as a researcher's folder of scans would be. The script
opens the folder, shows a volume without labels, paints one slice of it (copied from the phantom's truth, as
if painted by hand) and shows the table's updated counts. Then a short supervised run in the Train dock (a few
seconds on a CPU: the picture needs the list, not a good model) ends with the cross-cohort review list; the
script clicks its first row, the least confident slice, and shows that volume at that slice with the model's
prediction layer (``12-cohort-review.png``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "images"


def pump(app, seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def wait_until(app, ready, what: str, timeout: float = 600) -> None:
    end = time.perf_counter() + timeout
    while not ready():
        if time.perf_counter() > end:
            raise TimeoutError(f"{what} did not happen in {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)


def write_cohort(root: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    from napari_samatch.core.data.sample import make_cardiac_phantom

    images, labels, truth = root / "images", root / "labels", {}
    images.mkdir(parents=True)
    labels.mkdir()
    for seed in range(4):
        name = f"patient{seed + 1:03d}"
        vol = make_cardiac_phantom(seed=seed)
        affine = np.diag([1.5, 1.5, 8.0, 1.0])  # in-plane 1.5 mm, 8 mm slices (x, y, z)
        # NIfTI stores (x, y, z); the phantom is (z, y, x)
        nib.save(nib.Nifti1Image(vol.image.transpose(2, 1, 0).astype(np.float32), affine), images / f"{name}.nii.gz")
        truth[name] = vol.labels
        if seed == 0:
            painted = np.zeros_like(vol.labels)
            painted[[3, 8]] = vol.labels[[3, 8]]
            nib.save(nib.Nifti1Image(painted.transpose(2, 1, 0).astype(np.uint8), affine),
                     labels / f"{name}.nii.gz")
    return images, labels, truth


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="samatch-cohort-docs-"))
    os.environ["NAPARI_SAMATCH_HOME"] = str(work / "home")
    import napari
    from qtpy.QtWidgets import QApplication

    images, labels, truth = write_cohort(work)
    viewer = napari.Viewer(title="napari-samatch")
    app = QApplication.instance()
    viewer.window.resize(1500, 950)
    dock, cohort = viewer.window.add_plugin_dock_widget("napari-samatch", "Cohort", tabify=True)
    viewer.window.show()
    pump(app, 1.0)
    assert cohort.open_cohort(images, labels)
    assert cohort.show_member("patient002")
    ctl = cohort.ctl
    # the volume is read in a worker thread: wait until it is shown with its labels layer
    wait_until(app, lambda: cohort.loading is None and ctl.cohort_shown == "patient002"
               and ctl.labels_layer is not None, "showing patient002")
    pump(app, 1.0)
    viewer.screenshot(str(OUT / "10-cohort-open.png"), canvas_only=False, flash=False)
    print("wrote", OUT / "10-cohort-open.png")

    # paint one slice of patient002 (its truth, as if by hand) and let the table count it
    k, t = 6, truth["patient002"]
    idx = np.nonzero(t[k])
    ctl.labels_layer.data_setitem((np.full(idx[0].shape, k), *idx), t[k][idx])
    ctl.go_to_slice(k)
    pump(app, 2.0)
    viewer.screenshot(str(OUT / "11-cohort-painted.png"), canvas_only=False, flash=False)
    print("wrote", OUT / "11-cohort-painted.png")

    # a short run on the cohort (Start in the Train dock); its end fills the cross-cohort review list
    train_dock, train = viewer.window.add_plugin_dock_widget("napari-samatch", "Train", tabify=True)
    train.set_config(preset="quick", method="supervised", warmup_method="supervised", warmup_iters=60,
                     sam_iters=0, joint_iters=0, size=64, batch_labeled=3, batch_unlabeled=2, eval_every=0,
                     checkpoint_every=0, val_slices=0, device="cpu")
    assert train.start(fresh=True)
    panel = cohort.review
    wait_until(app, lambda: ctl.job is None and ctl.state == "idle", "the run")
    wait_until(app, lambda: panel.worker is None and panel.table.rowCount() > 0, "the review list")
    # click the least confident slice: its volume is shown there with the model's prediction
    row = panel.shown_rows[0]
    panel.table.selectRow(0)
    wait_until(app, lambda: cohort.loading is None and cohort.prediction_layer() is not None
               and ctl.cohort_shown == row.member, "showing the slice")
    dock.raise_()
    pump(app, 2.0)
    viewer.screenshot(str(OUT / "12-cohort-review.png"), canvas_only=False, flash=False)
    print("wrote", OUT / "12-cohort-review.png", f"({row.member}, slice {row.index}, confidence {row.confidence:.2f})")
    viewer.close()


if __name__ == "__main__":
    main()
