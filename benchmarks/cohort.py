"""A cohort larger than the engine's data budget: lazy slices, bounded memory. Peak RSS per phase.

    python benchmarks/cohort.py [--volumes 200] [--slices 40] [--side 256] [--iters 30] [--eager]
    python benchmarks/cohort.py --volumes 100 --slices 300 --side 512 --dtype int16 --labeled-volumes 3 \
        --iters 10 --threads 1 --predict --tmp /big/disk          # issue 17's cohort (15.7 GB on disk)

1. ``write``: ``--volumes`` synthetic NIfTI volumes (``--dtype`` float32 or int16) of ``--slices`` x ``--side``
   x ``--side`` (uncompressed ``.nii``; 200 x 40 x 256 x 256 float32 is 2.1 GB, 100 x 300 x 512 x 512 int16
   15.7 GB) in ``images/`` of a temporary folder, deleted at the end; the first ``--labeled-volumes`` get a
   label file in ``labels/`` with 3 painted slices, the others none;
2. ``open``: the CLI's cohort path, ``cohort.list_cohort(images, labels)`` + ``cohort.cohort_slices`` (as
   ``napari-samatch train --images DIR --labels DIR``; lazy: reads headers and the few label volumes only);
3. ``train_lazy``: an ``Engine`` on it (its slices become a ``SliceStore``), ``--iters`` UniMatch steps
   at ``--size`` (default 128), batch 4 + 4, on the CPU (after 3 untimed warm-up steps), then the median
   time to fetch 8 random slices + labels from the store;
4. with ``--predict``: ``predict_export``, the trained UNet through ``cohort_masks.predict_to_folder`` (what
   ``napari-samatch predict --images DIR --out DIR`` and the Cohort dock run) on every volume (or the first
   ``--predict-volumes``), one ``.nii.gz`` mask per volume; the phase's time is split into reading, predicting
   and writing (the three calls are timed inside ``predict_to_folder``), with the per-slice rate;
5. with ``--eager``, after the lazy phases: the same slices read into lists (what the eager readers hold)
   and trained with stacked tensors, for the comparison of memory and step time.

Reads come from the page cache (the files were just written): on a network file system the first read
of each slice costs more. RSS is sampled every 20 ms by a thread (psutil); the phase's peak is reported
with the RSS after the imports subtracted too. Prints one line per phase and writes
``benchmarks/results/cohort.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 2**20


class PeakRSS:
    """Samples this process's RSS in a thread; ``phase()`` returns the peak since the last call."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def phase(self) -> tuple[float, float]:
        now = self.proc.memory_info().rss
        peak, self.peak = max(self.peak, now), now
        return now / MIB, peak / MIB

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def write_cohort(folder: Path, volumes: int, slices: int, side: int, labeled: int,
                 seed: int = 0, dtype: str = "float32") -> tuple[list[Path], list[Path | None]]:
    """Noisy volumes with a bright disc whose radius drifts along z, in ``folder/images``; labels (the disc
    on 3 slices) in ``folder/labels``, named like their volume, for the first ``labeled`` volumes."""
    import nibabel as nib

    (folder / "images").mkdir()
    (folder / "labels").mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    r = np.hypot(yy - side / 2, xx - side / 2)
    images, labels = [], []
    for v in range(volumes):
        radius = side * (0.15 + 0.1 * np.sin(np.linspace(0, np.pi, slices) + v))
        disc = r[None] < radius[:, None, None]
        vol = rng.standard_normal((slices, side, side), dtype=np.float32)
        vol *= 10
        vol += np.float32(100)
        vol[disc] += 60  # in place: a 300 x 512 x 512 volume is 315 MB as float32
        if dtype != "float32":
            vol = np.rint(vol).astype(dtype)
        path = folder / "images" / f"case{v:04d}.nii"
        nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), path)  # NIfTI order (X, Y, Z)
        images.append(path)
        if v < labeled:
            lab = np.zeros(vol.shape, np.uint8)
            for z in (slices // 4, slices // 2, 3 * slices // 4):
                lab[z] = disc[z]
            labels.append(folder / "labels" / f"case{v:04d}.nii")
            nib.save(nib.Nifti1Image(lab.transpose(2, 1, 0), np.eye(4)), labels[-1])
            del lab
        else:
            labels.append(None)
        del vol, disc
    return images, labels


def train(data, args, budget_mb: float) -> tuple[object, list[float]]:
    from napari_samatch.core.config import preset
    from napari_samatch.core.engine import events as ev
    from napari_samatch.core.engine.engine import Engine

    config = preset("quick", method="unimatch", warmup_iters=0, sam_iters=0, joint_iters=args.iters,
                    size=args.size, batch_labeled=4, batch_unlabeled=4, eval_every=0, checkpoint_every=0,
                    device="cpu", threads=args.threads, data_budget_mb=budget_mb)
    engine = Engine(data, config.replace(num_classes=data.num_classes, class_names=list(data.class_names)))
    steps: list[float] = []
    engine.run(lambda e: steps.append(e.data["step_s"]) if e.kind == ev.PROGRESS else None)
    return engine, steps


def fetch_ms(engine, calls: int = 40, batch: int = 8, seed: int = 1) -> float:
    """Median time to get ``batch`` random slices and their labels as the step does (in a large cohort
    nearly every lazy fetch misses the store's cache and reads the files)."""
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(calls):
        ix = torch.as_tensor(rng.integers(0, len(engine.images), batch))
        t0 = time.perf_counter()
        engine.images[ix], engine.labels[ix]
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def predict_export(engine, members, out: Path, size: int) -> dict:
    """``predict_to_folder`` on ``members`` into ``out``, with its read / predict / write calls timed."""
    from napari_samatch.core.match import cohort_masks

    spent = {"read_s": 0.0, "predict_s": 0.0, "write_s": 0.0}
    slices = 0
    per_volume: list[float] = []

    def timed(key, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    originals = {k: getattr(cohort_masks, k) for k in ("read_volume", "predict_volume", "write_mask")}
    last = [time.perf_counter()]

    def on_volume(k, member, target) -> None:
        nonlocal slices
        slices += member_shape(member)[0]
        now = time.perf_counter()
        per_volume.append(now - last[0])
        last[0] = now
        print(f"    predicted {k + 1}/{len(members)} {member.name}: {per_volume[-1]:.1f} s", flush=True)

    cohort_masks.read_volume = timed("read_s", originals["read_volume"])
    cohort_masks.predict_volume = timed("predict_s", originals["predict_volume"])
    cohort_masks.write_mask = timed("write_s", originals["write_mask"])
    try:
        targets = cohort_masks.check_mask_folder(members, out, overwrite=False)
        engine.unet.eval()
        written = cohort_masks.predict_to_folder(engine.unet, size, members, targets, overwrite=False,
                                                 on_volume=on_volume)
    finally:
        for k, fn in originals.items():
            setattr(cohort_masks, k, fn)
    masks_mib = sum(p.stat().st_size for p in written) / MIB
    return {"volumes": len(written), "slices": slices, **{k: round(v, 1) for k, v in spent.items()},
            "predict_ms_per_slice": round(1000 * spent["predict_s"] / max(slices, 1), 2),
            "volume_s_median": round(statistics.median(per_volume), 2) if per_volume else None,
            "volume_s_range": [round(min(per_volume), 2), round(max(per_volume), 2)] if per_volume else None,
            "masks_on_disk_mib": round(masks_mib, 1)}


def member_shape(member) -> tuple[int, ...]:
    from napari_samatch.core.data.cohort import volume_shape

    return volume_shape(member.image)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=200)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--labeled-volumes", type=int, default=5)
    ap.add_argument("--size", type=int, default=128, help="training frame")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--budget-mb", type=float, default=2048.0, help="data_budget_mb of the lazy run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["float32", "int16"], default="float32", help="voxel type on disk")
    ap.add_argument("--predict", action="store_true",
                    help="predict every volume and export its mask (cohort_masks.predict_to_folder)")
    ap.add_argument("--predict-volumes", type=int, default=None,
                    help="predict and export only the first K volumes (when all would take too long)")
    ap.add_argument("--eager", action="store_true", help="also train on the slices read into memory")
    ap.add_argument("--tmp", type=Path, default=None, help="parent folder of the temporary cohort")
    ap.add_argument("--out", type=Path, default=RESULTS / "cohort.json")
    args = ap.parse_args(argv)

    from napari_samatch.core.data.cohort import cohort_slices, list_cohort
    from napari_samatch.core.data.slices import SliceSet

    torch.set_num_threads(args.threads)

    rss = PeakRSS()
    base, _ = rss.phase()
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": platform.platform(),
                    "cpus": psutil.cpu_count(), "baseline_rss_mib": round(base, 1), "phases": {}}

    def record(name: str, t0: float, **extra) -> None:
        now, peak = rss.phase()
        report["phases"][name] = {"seconds": round(time.perf_counter() - t0, 2), "rss_mib": round(now, 1),
                                  "peak_rss_mib": round(peak, 1), "peak_above_baseline_mib": round(peak - base, 1),
                                  **extra}
        print(f"{name:>12}: {time.perf_counter() - t0:7.1f} s  RSS {now:7.0f} MiB  peak {peak:7.0f} MiB "
              f"(+{peak - base:.0f} over the imports)  {extra or ''}", flush=True)

    with tempfile.TemporaryDirectory(prefix="samatch-cohort-", dir=args.tmp) as tmp:
        t0 = time.perf_counter()
        images, labels = write_cohort(Path(tmp), args.volumes, args.slices, args.side, args.labeled_volumes,
                                      dtype=args.dtype)
        on_disk = sum(p.stat().st_size for p in Path(tmp).rglob("*.nii")) / MIB
        record("write", t0, on_disk_mib=round(on_disk))

        t0 = time.perf_counter()
        members = list_cohort(Path(tmp) / "images", Path(tmp) / "labels")
        data = cohort_slices(members)
        record("open", t0, slices=len(data), labeled=len(data.labeled_indices()),
               eager_footprint_mib=round(len(data) * args.side ** 2 * 4 / MIB))

        t0 = time.perf_counter()  # the first steps of a process are slow (threads, allocator): not timed
        warm = argparse.Namespace(**{**vars(args), "iters": 3})
        train(data, warm, args.budget_mb)
        record("warm_up", t0)

        t0 = time.perf_counter()
        engine, steps = train(data, args, args.budget_mb)
        store = engine.images.stats()
        record("train_lazy", t0, median_step_s=round(statistics.median(steps), 3),
               fetch_8_ms=round(fetch_ms(engine), 2), store_entries=store["entries"],
               store_peak_mib=round(store["peak_bytes"] / MIB, 1), store_budget_mib=round(store["budget_bytes"] / MIB))

        if args.predict:
            t0 = time.perf_counter()
            chosen = members[: args.predict_volumes] if args.predict_volumes else members
            stats = predict_export(engine, chosen, Path(tmp) / "masks", args.size)
            record("predict_export", t0, **stats)
        del engine

        if args.eager:
            t0 = time.perf_counter()
            eager = SliceSet(list(data.images), list(data.labels), list(data.hidden), data.ids, data.groups,
                             data.positions, data.num_classes, data.class_names)
            record("read_eager", t0)
            t0 = time.perf_counter()
            engine, steps = train(eager, args, budget_mb=1e9)  # stacked, whatever the size
            record("train_eager", t0, median_step_s=round(statistics.median(steps), 3),
                   fetch_8_ms=round(fetch_ms(engine), 2))
            del engine, eager
    rss.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
