"""Drive napari through the user guide's steps and save a screenshot of each (docs/images/*.png).

    xvfb-run -a python docs/make_screenshots.py            # the bundled LiteMedSAM, a short schedule
    xvfb-run -a python docs/make_screenshots.py --sam tiny  # a tiny random SAM: checks the script quickly
    xvfb-run -a python docs/make_screenshots.py --sam-iters 10 --joint 6  # what made docs/images (slow CPU)

Everything goes through the docks' own buttons and the layers' public API, as a user would; nothing
is drawn by hand. Runs in a few minutes on a laptop CPU (longer on a busy machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "images"


def pump(app, seconds: float = 0.3) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def wait(app, ctl, timeout: float = 7200) -> None:
    start = time.perf_counter()
    while ctl.job is not None or ctl.state != "idle":
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the run did not finish in time")


def shot(viewer, app, name: str, dock=None) -> None:
    if dock is not None:
        dock.raise_()
    pump(app, 0.5)
    viewer.screenshot(str(OUT / name), canvas_only=False, flash=False)
    print("wrote", OUT / name, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", choices=["litemedsam", "tiny"], default="litemedsam")
    parser.add_argument("--warmup", type=int, default=80, help="supervised warm-up iterations of the demo run")
    parser.add_argument("--sam-iters", type=int, default=30, help="SAM fine-tuning iterations of the demo run")
    parser.add_argument("--joint", type=int, default=40, help="joint iterations of the demo run")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="samatch-docs-"))
    os.environ["NAPARI_SAMATCH_HOME"] = str(work / "home")

    import napari
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    from qtpy.QtWidgets import QApplication

    from napari_samatch.core.data.sample import make_cardiac_phantom

    viewer = napari.Viewer(title="napari-samatch")
    app = QApplication.instance()
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-samatch", "cardiac_phantom")
    docks = {}
    for name in ("Data", "Train", "Review"):
        dock, widget = viewer.window.add_plugin_dock_widget("napari-samatch", name, tabify=True)
        docks[name] = (dock, widget)
    data_w, train_w, review_w = (docks[n][1] for n in ("Data", "Train", "Review"))
    ctl = data_w.ctl
    viewer.window.show()
    viewer.dims.set_point(0, ctl.image_layer.data_to_world((6, 0, 0))[0])
    pump(app, 1.0)

    # 1. the data: the sample's three labeled slices
    shot(viewer, app, "01-data.png", docks["Data"][0])

    # 2. paint one more slice (here: copied from the phantom's truth, as if painted by hand)
    truth = make_cardiac_phantom().labels
    labels = ctl.labels_layer
    k = 3
    idx = np.nonzero(truth[k])
    labels.data_setitem((np.full(idx[0].shape, k), *idx), truth[k][idx])
    ctl.go_to_slice(k)
    pump(app, 0.5)
    shot(viewer, app, "02-paint.png", docks["Data"][0])

    # 3. train: a short schedule; screenshot while it runs
    settings = dict(preset="quick", size=96, warmup_method="supervised", warmup_iters=args.warmup,
                    sam_iters=args.sam_iters, joint_iters=args.joint,
                    batch_labeled=4, batch_unlabeled=2, eval_every=20, checkpoint_every=0, val_slices=1)
    if args.sam == "tiny":
        sys.path.insert(0, str(HERE.parent / "tests"))
        from gui_helpers import make_tiny_sam

        settings.update(sam_backend="sam", sam_checkpoint=str(make_tiny_sam(work / "tiny_sam.pth")), size=64)
    train_w.set_config(**settings)
    docks["Train"][0].raise_()
    assert train_w.start()
    while ctl.state != "idle" and train_w.progress.value() < (settings["warmup_iters"] + settings["sam_iters"] + 5):
        app.processEvents()
        time.sleep(0.02)
    shot(viewer, app, "03-train.png", docks["Train"][0])
    wait(app, ctl)
    shot(viewer, app, "04-trained.png", docks["Train"][0])

    # 4. review: prompts and pseudo-labels on an unlabeled slice; slices sorted by confidence
    rev = review_w.review
    k = 5
    ctl.go_to_slice(k)
    review_w.table.sortItems(1)
    shot(viewer, app, "05-review.png", docks["Review"][0])
    rev.layers["confidence"].visible = True
    rev.layers["pseudo"].visible = False
    shot(viewer, app, "06-confidence.png", docks["Review"][0])
    rev.layers["confidence"].visible = False
    rev.layers["pseudo"].visible = True

    # 5. move a box: SAM re-runs for that slice
    boxes = rev.layers["boxes"]
    on_k = [i for i, v in enumerate(boxes.data) if int(round(v[0, 0])) == k]
    if on_k:
        moved = list(boxes.data)
        moved[on_k[-1]] = moved[on_k[-1]] + np.array([0.0, -4.0, 6.0])
        boxes.data = moved
    else:  # no prompt on this slice: draw one around the LV
        review_w.class_combo.setCurrentIndex(2)
        boxes.add_rectangles(np.array([[k, 62, 70], [k, 62, 110], [k, 100, 110], [k, 100, 70]], float))
    boxes.selected_data = {len(boxes.data) - 1}
    viewer.layers.selection.active = boxes
    start = time.perf_counter()
    while rev._refining is not None or rev._refine_queue:
        app.processEvents()
        if time.perf_counter() - start > 600:
            break
    shot(viewer, app, "07-box-edit.png", docks["Review"][0])
    print("box-edit refinement latencies (ms):", [round(v) for v in rev.latencies_ms],
          "of which SAM computed:", [round(v) for v in rev.compute_ms], flush=True)

    # 6. accept the slice: it becomes labeled for the next round
    viewer.layers.selection.active = rev.layers["pseudo"]
    review_w.accept_btn.click()
    pump(app, 0.5)
    shot(viewer, app, "08-accept.png", docks["Data"][0])

    # 7. export and save the session
    review_w.export(str(work / "mask.nii.gz"))
    ctl.sessions.save(work / "session", block=True)
    pump(app, 0.5)
    shot(viewer, app, "09-export-session.png", docks["Review"][0])
    viewer.close()
    print("session and mask written under", work)


if __name__ == "__main__":
    main()
