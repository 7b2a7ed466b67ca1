"""Where the joint SAM-Match step's time goes on a GPU, and which levers shorten it.

Sections of ``benchmarks/gpu_check.py`` (``profile`` always, syncs and ladder with ``--levers``), which the
device machine starts through ``benchmarks/gpu_check.sh``; ``--dry-run`` runs the same code shrunk on the CPU.

Why: the first GPU run (docs/benchmarks.md, "The GPU check") found the joint step at batch 4 + 4 taking
0.148 s while the GPU was busy for about 0.064 s of it: the step waits on the host. Two suspects:
synchronising calls (``.item()``, ``.tolist()``, small host-to-device copies from pageable memory, which
wait for the stream to drain) that stop Python from running ahead of the GPU, and kernel count.

1. ``profile``: ``torch.profiler`` over a few joint steps (``OUT/profile.txt``) and the GPU's busy share.
2. ``syncs``: every synchronising CUDA call of three joint steps, counted by the line of Python that made
   it (``torch.cuda.set_sync_debug_mode``).
3. ``ladder``: the joint step's median time as levers are switched on one after another, then all off
   again (the last rung checks that the machine did not drift): SAM's prompts decoded and learned in runs of
   ``refiner.GPU_CHUNK`` instead of the CPU's 4 (the GPU's default since 2026-12-06: counted on a CPU, a
   third of the operations a 4 + 4 step dispatches; ``benchmarks/step_ops.py``); the step's host-made tensors
   (random draws, CutMix boxes, sampled indices) copied to the GPU from pinned memory without blocking
   (``device.to_device``, also the default since then; a blocking copy synchronises the stream); TF32 matmuls
   and cuDNN autotuning; the
   augmentation's random draws made on the GPU (a CUDA generator, and the geometry's constant matrices
   kept there: no host-to-device copy per draw); the Match model in channels-last memory format;
   ``torch.compile`` of the Match model.
"""

from __future__ import annotations

import collections
import gc
import statistics
import time
import warnings
from pathlib import Path


def _engine(device: str, size: int, batch: int, slices: int | None = None):
    """An engine on the phantom in ``decoder`` mode with SAM training every step, its optimiser made."""
    from napari_samatch.core.config import preset
    from napari_samatch.core.data.datasets import phantom
    from napari_samatch.core.engine.engine import Engine

    data, _, _ = phantom(shape=(slices or max(12, 2 * batch + 4), size, size))
    config = preset("standard", size=size, batch_labeled=batch, batch_unlabeled=batch, sam_mode="decoder",
                    device=device, threads=0, eval_every=0, checkpoint_every=0, sam_every=1)
    engine = Engine(data, config.replace(num_classes=data.num_classes, class_names=list(data.class_names)))
    engine.sam_optimizer()
    return engine


def profile(device: str, dry: bool, out: Path, say) -> dict:
    """torch.profiler over a few joint steps (batch 4 + 4, decoder): which kernels and ops take the time,
    and whether the step waits on the host (CPU time near wall time: launch-bound, a case for CUDA graphs
    or torch.compile). The table goes to OUT/profile.txt."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch, size, n = (1, 64, 1) if dry else (4, 256, 5)
    engine = _engine(device, size, batch, slices=max(6, 2 * batch + 4))
    cuda = engine.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(1 if dry else 3):
        engine.step("joint")
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t = time.perf_counter()
    with torch_profile(activities=acts) as prof:
        for _ in range(n):
            engine.step("joint")
        sync()
    wall = (time.perf_counter() - t) / n
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30)
    (out / "profile.txt").write_text(table)
    events = prof.key_averages()
    res = {"batch": batch, "size": size, "steps": n, "wall_per_step_s (profiled)": round(wall, 4),
           "ops_per_step": round(sum(e.count for e in events) / n)}
    if cuda:
        from torch.autograd import DeviceType

        # device-side events only (kernels, copies): the CPU ops that launched them would count them twice
        kernels = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
        res["gpu_busy_per_step_s"] = round(kernels / 1e6 / n, 4)
        res["gpu_busy_fraction"] = round(kernels / 1e6 / n / wall, 3)
        say(f"profile: {wall * 1e3:.1f} ms a step, GPU busy {res['gpu_busy_fraction']:.0%} of it "
            f"(lower means the step waits on Python and kernel launches); table in profile.txt")
    del engine
    gc.collect()
    return res


def sync_audit(engine, steps: int = 3) -> dict:
    """Synchronising CUDA calls per joint step, by the Python line that made them (CUDA only)."""
    import torch

    if engine.device.type != "cuda":
        return {"skipped": "not on CUDA"}
    where: collections.Counter = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                engine.step("joint")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            where[f"{Path(w.filename).name}:{w.lineno}"] += 1
    total = sum(where.values())
    return {"per_step": round(total / steps, 1),
            "by_line_per_step": {k: round(v / steps, 1) for k, v in where.most_common(25)}}


def _time_steps(engine, steps: int, warmup: int) -> dict:
    import torch

    cuda = engine.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    for i in range(steps + warmup):
        sync()
        if cuda and i == warmup:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        engine.step("joint")
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    row = {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
           "spread_s": round(statistics.quantiles(times, n=4)[2] - statistics.quantiles(times, n=4)[0], 4)
           if len(times) >= 4 else None}
    if cuda:
        row["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def ladder(engine, steps: int, warmup: int, compile_ok: bool, say) -> list[dict]:
    """The joint step as levers go on one by one (cumulative), then all off again."""
    import torch

    import napari_samatch.core.engine.engine as engine_module
    from napari_samatch.core import device as device_module
    from napari_samatch.core.sam import refiner as refiner_module

    cuda = engine.device.type == "cuda"
    long_runs = refiner_module.GPU_CHUNK

    def set_long_runs(on: bool) -> None:  # off: SAM's prompts in the CPU's runs of 4, as on 2026-12-04
        refiner_module.GPU_CHUNK = long_runs if on else refiner_module.LEARN_CHUNK

    def set_pinned(on: bool) -> None:  # off: blocking copies of host-made tensors, as on 2026-12-04
        device_module.PINNED_COPIES = on

    original_step_fn = engine_module.unimatch_step
    aug_gen = torch.Generator(device=engine.device).manual_seed(1) if cuda else engine.rank_gen

    def set_flags(on: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.benchmark = on

    from napari_samatch.core.match import augment

    host_constants = augment._FLIP, augment._ROT90

    def set_gpu_generator(on: bool) -> None:
        # draws on the GPU make random_geometry move its two constant matrices there on every call:
        # they go along, already on the device, so the rung removes copies rather than trading them
        if not on:
            engine_module.unimatch_step = original_step_fn
            augment._FLIP, augment._ROT90 = host_constants
            return
        augment._FLIP, augment._ROT90 = (t.to(aug_gen.device) for t in host_constants)

        def with_gpu_generator(unet, x, y, u, gen, *args, **kwargs):
            return original_step_fn(unet, x, y, u, aug_gen, *args, **kwargs)

        engine_module.unimatch_step = with_gpu_generator

    def set_channels_last(on: bool) -> None:
        engine.unet.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    plain_unet = engine.train_unet

    def set_compiled(on: bool) -> None:
        engine.train_unet = torch.compile(plain_unet) if on else plain_unet

    set_long_runs(False)
    set_pinned(False)
    rungs = [("baseline (as on 2026-12-04)", None, False),
             (f"+ SAM's prompts {long_runs} a run", set_long_runs, True),
             ("+ host-made tensors pinned, not blocking", set_pinned, True),
             ("+ TF32 matmuls, cuDNN autotuning", set_flags, True),
             ("+ augmentation draws on the GPU", set_gpu_generator, True),
             ("+ Match model channels-last", set_channels_last, True)]
    if compile_ok:
        rungs.append(("+ torch.compile(Match model)", set_compiled, True))
    rows = []
    try:
        for name, switch, on in rungs:
            t = time.perf_counter()
            if switch is not None:
                switch(on)
            # the first steps after a switch absorb autotuning and compilation
            row = {"rung": name, **_time_steps(engine, steps, warmup + (3 if "compile" in name else 0))}
            row["wall_s"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            say(f"levers: {name:42s} {row['median_s'] * 1e3:7.1f} ms (min {row['min_s'] * 1e3:.1f}, "
                f"IQR {1e3 * (row['spread_s'] or 0):.1f})" + (f", {row['peak_cuda_gib']} GiB" if cuda else ""))
    finally:
        for switch in (set_compiled, set_channels_last, set_gpu_generator, set_flags, set_pinned, set_long_runs):
            switch(False)
    row = {"rung": "all off again (drift check)", **_time_steps(engine, steps, warmup)}
    rows.append(row)
    set_long_runs(True)
    set_pinned(True)
    say(f"levers: {row['rung']:42s} {row['median_s'] * 1e3:7.1f} ms")
    return rows


def run(device: str, dry: bool, say, time_left_s: float) -> dict:
    """Both parts on the phantom's slices in decoder mode at 256 px: batch 4 + 4 with the sync audit and
    ``torch.compile``, then batch 16 + 16 without them (shrunk to 64 px, batch 1, on a dry run)."""
    import torch

    t0 = time.perf_counter()
    out: dict = {"mode": "decoder"}
    for batch in ((1,) if dry else (4, 16)):
        size, steps, warmup = (64, 2, 1) if dry else (256, 15, 3)
        engine = _engine(device, size, batch)
        for _ in range(warmup):  # encodes the phantom's slices once (decoder mode caches them)
            engine.step("joint")
        audit = sync_audit(engine) if batch == (1 if dry else 4) else {"skipped": "audited at batch 4"}
        if "per_step" in audit:
            say(f"levers: {audit['per_step']} synchronising calls a joint step; by line: "
                + ", ".join(f"{k} x{v}" for k, v in list(audit["by_line_per_step"].items())[:10]))
        left = time_left_s - (time.perf_counter() - t0)
        compile_ok = not dry and batch == 4 and left > 240  # compilation can take a minute or two
        say(f"levers: batch {batch} + {batch}, {size} px, median of {steps} joint steps per rung")
        out[f"batch_{batch}"] = {"size": size, "batch": [batch, batch], "steps": steps, "warmup": warmup,
                                 "syncs": audit, "ladder": ladder(engine, steps, warmup, compile_ok, say),
                                 "compile_tried": compile_ok}
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out
