"""A CT-sized volume (300 x 512 x 512) through the headless engine: peak memory of each phase.

    python benchmarks/scale.py [--slices 300] [--side 512] [--encode 40] [--cache-mb 32]

What a user of ``napari-samatch train --image ct.nii.gz --labels painted.nii.gz`` goes through, in one
process, with the resident set size (RSS) and the peak (``ru_maxrss``) recorded after each phase:

1. ``write``: a synthetic 300 x 512 x 512 float32 volume (the phantom's anatomy, 300 MiB) and a labels
   volume with 3 painted slices, written as NIfTI to a temp folder;
2. ``read``: both read back, and the slice set built at the training frame (``--size``, default 256);
3. ``train``: the Match model's supervised warm-up, then SAM-Match joint steps with the bundled LiteMedSAM,
   whose embedding cache gets a deliberately small budget (``--cache-mb``) so that it spills to disk;
4. ``encode``: ``--encode`` slices encoded through that cache (each embedding is 2 MiB in fp16; the whole
   volume would be 600 MiB, or 30 min of encoding on a 2-core CPU), showing that memory stays at the
   budget while the disk takes the rest;
5. ``answer``: the Review dock's answer for 16 slices, in the training frame and at 512 x 512 (the docks' way);
6. ``predict``: the Match model labels all 300 slices at full resolution, written as NIfTI.

Prints one line per phase and writes ``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _memory import PhaseLog

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--size", type=int, default=256, help="training frame")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--joint", type=int, default=4)
    ap.add_argument("--encode", type=int, default=40, help="slices to push through the embedding cache")
    ap.add_argument("--cache-mb", type=float, default=32.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = ap.parse_args(argv)

    from napari_samatch.core.config import preset
    from napari_samatch.core.data import datasets
    from napari_samatch.core.data.sample import make_cardiac_phantom
    from napari_samatch.core.data.writers import write_mask
    from napari_samatch.core.engine.engine import Engine
    from napari_samatch.core.match.inference import predict_volume

    log = PhaseLog()
    phase = log.phase

    with tempfile.TemporaryDirectory(prefix="samatch-scale-") as tmp:
        tmp = Path(tmp)
        # 1. write: the anatomy of the phantom at 12 slices, stretched to the CT's slice count
        small = make_cardiac_phantom(shape=(12, args.side, args.side))
        z = np.linspace(0, 11, args.slices).round().astype(int)
        painted = [int(args.slices * f) for f in (0.25, 0.5, 0.75)]
        labels = np.zeros((args.slices, args.side, args.side), np.uint8)
        for k in painted:
            labels[k] = small.labels[z[k]]
        image = small.image[z]
        image = image + np.random.default_rng(0).normal(0, 0.02, image.shape).astype(np.float32)
        import nibabel as nib

        nib.save(nib.Nifti1Image(np.moveaxis(image, 0, -1), np.diag([0.7, 0.7, 1.0, 1.0])), tmp / "ct.nii.gz")
        nib.save(nib.Nifti1Image(np.moveaxis(labels, 0, -1), np.diag([0.7, 0.7, 1.0, 1.0])), tmp / "painted.nii.gz")
        del image, labels, small
        phase("write", image_mib=round(args.slices * args.side**2 * 4 / 2**20))

        # 2. read, as the CLI does
        data, vol = datasets.volume_with_labels(tmp / "ct.nii.gz", tmp / "painted.nii.gz")
        phase("read", slices=len(data), labeled=len(data.labeled_indices()))

        # 3. train
        config = preset("quick", size=args.size, warmup_method="supervised", warmup_iters=args.warmup, sam_iters=0,
                        joint_iters=args.joint, batch_labeled=2, batch_unlabeled=2, eval_every=0,
                        checkpoint_every=0, cache_budget_mb=args.cache_mb, device="cpu", threads=args.threads)
        engine = Engine(data, config.replace(num_classes=data.num_classes, class_names=list(data.class_names)))
        engine.run(lambda e: None, checkpoint_dir=tmp / "run")
        phase("train", cache=engine.refiner.cache.stats())

        # 4. encode more slices through the cache (budget in memory, the rest spilled to disk)
        keys = [int(k) for k in np.linspace(0, len(data) - 1, args.encode).round()]
        with torch.no_grad():
            engine.refiner.embeddings(keys, engine.images[keys])
        stats = engine.refiner.cache.stats()
        phase("encode", cache_entries=stats["entries"], in_memory_mib=round(stats["bytes_in_memory"] / 2**20, 1),
              on_disk_mib=round(stats["bytes_on_disk"] / 2**20, 1))

        # 5. the answer the Review dock shows: one preview chunk of 16 slices around the middle painted one, made
        # in the training frame and at the slices' own size (the docks' way; its first call interpolates the
        # painted slices over the whole volume at full resolution); each twice, the first encodes the slices
        chunk = list(range(painted[1] - 8, painted[1] + 8))
        times = {}
        for tag, native in (("frame", False), ("native_first", True), ("frame_again", False), ("native", True)):
            t0 = time.perf_counter()
            engine.preview(chunk, native=native)
            times[f"{tag}_s"] = round(time.perf_counter() - t0, 2)
        phase("answer", **times)

        # 6. predict the whole volume at full resolution and write it
        seg = predict_volume(engine.unet, vol.image, args.size, device="cpu")
        files = write_mask(tmp / "mask.nii.gz", seg, like=vol)
        phase("predict", mask_mib=round(Path(files[0]).stat().st_size / 2**20, 1) if files else None)

    log.write(args.out, args, torch=torch.__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
