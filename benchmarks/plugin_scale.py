"""A CT-sized volume (300 x 512 x 512) in the napari plugin: peak memory of the viewer, the docks and a run.

    xvfb-run -a python benchmarks/plugin_scale.py [--slices 300] [--side 512] [--size 128]

The plugin's path, as a user takes it: a viewer with the volume as an Image layer (float32, 300 MiB) and a
Labels layer with 3 painted slices, the Data / Train / Review docks, then Start with the bundled LiteMedSAM
and a short schedule. When the run ends the plugin previews *every* slice (one LiteMedSAM encode per
slice, cached within the embedding budget), filling the pseudo-label (uint8) and confidence (float32)
layers. The resident set size (RSS) is sampled every 0.5 s on the main thread; the script prints each
phase's RSS and the peak, and writes ``benchmarks/results/plugin_scale.json``.

This needs a display (``xvfb-run -a`` on a headless machine) and takes several minutes on a CPU: the
final preview encodes all slices (0.6-7 s each on the 2-vCPU VM, depending on its neighbours).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from _memory import PhaseLog

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--size", type=int, default=128, help="training frame")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--joint", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS / "plugin_scale.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("NAPARI_SAMATCH_HOME", tempfile.mkdtemp(prefix="samatch-plugin-scale-"))

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_samatch.core.data.sample import make_cardiac_phantom

    log = PhaseLog(sampled=True)
    phase = log.phase

    # the phantom's anatomy at 12 slices, stretched to the CT's slice count (as benchmarks/scale.py)
    small = make_cardiac_phantom(shape=(12, args.side, args.side))
    z = np.linspace(0, 11, args.slices).round().astype(int)
    image = small.image[z] + np.random.default_rng(0).normal(0, 0.02, (args.slices, args.side, args.side)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    for k in (int(args.slices * f) for f in (0.25, 0.5, 0.75)):
        labels[k] = small.labels[z[k]]
    del small
    phase("arrays", image_mib=round(image.nbytes / 2**20))

    viewer = napari.Viewer(title="napari-samatch plugin scale")
    app = QApplication.instance()
    viewer.add_image(image, name="ct")
    viewer.add_labels(labels, name="painted")
    del image, labels  # the layers hold them now
    docks = {n: viewer.window.add_plugin_dock_widget("napari-samatch", n, tabify=True)[1]
             for n in ("Data", "Train", "Review")}
    ctl = docks["Data"].ctl
    viewer.window.show()
    timer = QTimer()
    timer.timeout.connect(log.sample)
    timer.start(500)
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)
    phase("viewer", labeled=len(ctl.labeled_slices()))

    docks["Train"].set_config(preset="quick", size=args.size, warmup_method="supervised", warmup_iters=args.warmup,
                              sam_iters=0, joint_iters=args.joint, batch_labeled=2, batch_unlabeled=2,
                              eval_every=0, checkpoint_every=0, val_slices=0, device="cpu")
    assert docks["Train"].start(), "the Train dock refused to start"
    start = time.perf_counter()
    while ctl.job is not None or ctl.state != "idle":
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - start > 3 * 3600:
            raise TimeoutError("the run did not finish in 3 hours")
    rev = docks["Review"].review
    cache = ctl.engine.refiner.cache.stats() if ctl.engine is not None else {}
    phase("trained", layers=len(viewer.layers), previewed=int((rev.layers["confidence"].data.max(axis=(1, 2)) > 0).sum())
          if "confidence" in rev.layers else 0, cache_in_memory_mib=round(cache.get("bytes_in_memory", 0) / 2**20, 1),
          cache_on_disk_mib=round(cache.get("bytes_on_disk", 0) / 2**20, 1))
    timer.stop()
    viewer.close()

    log.write(args.out, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
