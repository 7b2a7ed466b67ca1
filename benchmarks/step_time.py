"""Time and peak memory of one training step, per stage, on this machine.

    python benchmarks/step_time.py                      # batch 1 and 4, decoder and full, 2 threads
    python benchmarks/step_time.py --batch 4 --mode decoder --steps 10 --device cuda

Each (batch, mode) runs in its own process so that its peak resident memory (ru_maxrss) is its own.
The data is the bundled phantom at 256 x 256 with 4 classes (background, RV, Myo, LV), so the benchmark
needs no download; every slice carries all three foreground classes, i.e. 3 prompts per image.

Reported per configuration: the median and the fastest of ``--steps`` timed steps after 2 untimed ones
(the untimed ones fill the embedding cache in ``decoder`` mode), for
  - ``unimatch``: the Match model's UniMatch step (no SAM),
  - ``joint``: the SAM-Match step with SAM training in that step (prompts, decode, both backward passes),
  - ``joint_frozen``: the SAM-Match step on the steps where SAM does not train (``sam_every`` > 1),
and the one-off encoding time per slice. From their differences it prints where a joint step's time goes:
``unet`` (the UniMatch step: the Match model's four views, forward and backward), ``sam_refine``
(joint_frozen - unimatch: prompts, batched decode and fusion of the unlabeled batch), ``sam_train``
(joint - joint_frozen: SAM's supervised decode on the labeled batch and both SAM backward passes; in
``full`` mode also the encoder's forward and backward) and ``encode`` (once per slice, cached, ``decoder``
mode). On CUDA it also records the peak GPU memory of each kind of step. Results go to stdout and
``benchmarks/results/step_time.json``; ``benchmarks/gpu_check.py`` calls :func:`measure` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def host_stall_fraction(seconds: float = 3.0) -> float:
    """Share of wall time a busy Python loop did not get (gaps over 5 ms): the hypervisor's share.

    On a shared virtual machine this can be large (0.4 was seen on our CI machine) and inflates every
    timing below by up to 1 / (1 - fraction); it is recorded so that numbers from different days compare.
    """
    lost, end = 0.0, time.perf_counter() + seconds
    last = time.perf_counter()
    while (now := time.perf_counter()) < end:
        if now - last > 0.005:
            lost += now - last
        last = now
    return round(lost / seconds, 3)


def split(row: dict) -> dict:
    """Where the joint step's median time goes, from the differences between the kinds of step."""
    med = {k: row[k]["median_s"] for k in KINDS if k in row}
    out = {}
    if "unimatch" in med:
        out["unet_s"] = med["unimatch"]
    if "joint_frozen" in med and "unimatch" in med:
        out["sam_refine_s"] = round(med["joint_frozen"] - med["unimatch"], 3)
    if "joint" in med and "joint_frozen" in med:
        out["sam_train_s"] = round(med["joint"] - med["joint_frozen"], 3)
    out["encode_per_slice_s"] = row.get("encode_per_slice_s")
    return out


def format_split(row: dict) -> str:
    s = row.get("split", {})
    parts = [f"{name} {s[key]:.3f} s" for name, key in (("UNet", "unet_s"), ("SAM refinement", "sam_refine_s"),
                                                        ("SAM training", "sam_train_s")) if key in s]
    enc = s.get("encode_per_slice_s")
    noisy = any(s.get(k, 0) < 0 for k in ("sam_refine_s", "sam_train_s"))
    return ("  split: " + ", ".join(parts) + (f"; encode {enc:.3f} s/slice, once" if enc else "")
            + (" (a negative share: the machine's noise is larger than it; take more --steps)" if noisy else ""))


KINDS = ("unimatch", "joint", "joint_frozen")


def measure(batch: int, mode: str, steps: int, threads: int, device: str, size: int, warmup: int = 2,
            kinds: tuple[str, ...] = KINDS, slices: int | None = None, amp_all: bool = False) -> dict:
    """One configuration, in this process.

    ``amp_all`` runs the whole step under the engine's autocast (bf16 on CUDA), SAM included; by default
    only the Match model runs under it. ``slices``: phantom slices (default max(12, 2 batch + 4)).
    """
    import contextlib

    import torch

    from napari_samatch.core.config import preset
    from napari_samatch.core.data.datasets import phantom
    from napari_samatch.core.device import autocast
    from napari_samatch.core.engine.engine import Engine

    data, _, _ = phantom(shape=(slices or max(12, 2 * batch + 4), size, size))
    config = preset("standard", size=size, batch_labeled=batch, batch_unlabeled=batch, sam_mode=mode,
                    device=device, threads=threads, eval_every=0, checkpoint_every=0, sam_every=1)
    config = config.replace(num_classes=data.num_classes, class_names=list(data.class_names))
    t0 = time.perf_counter()
    engine = Engine(data, config)
    engine.refiner  # loads SAM
    load_s = time.perf_counter() - t0
    engine.sam_optimizer()

    cuda = engine.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    keys = list(range(len(data)))
    t0 = time.perf_counter()
    if mode == "decoder":
        with torch.no_grad():
            engine.refiner.embeddings(keys, engine.images)
    sync()
    encode_s = (time.perf_counter() - t0) / len(keys) if mode == "decoder" else None

    def timed(kind: str) -> list[float]:
        engine.stage_iter = 0 if kind != "joint_frozen" else 1
        if kind == "joint_frozen":
            engine.config = engine.config.replace(sam_every=2)
        else:
            engine.config = engine.config.replace(sam_every=1)
        engine.config = engine.config.replace(method="unimatch" if kind == "unimatch" else "samatch")
        times = []
        whole = autocast(engine.device, True) if amp_all else contextlib.nullcontext()
        for i in range(steps + warmup):
            sync()
            if cuda and i == warmup:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            with whole:
                engine.step("joint")
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t)
        return times

    out = {"batch": batch, "mode": mode, "size": size, "threads": threads, "device": str(engine.device),
           "amp_all": amp_all, "load_s": round(load_s, 2),
           "encode_per_slice_s": None if encode_s is None else round(encode_s, 3)}
    for kind in kinds:
        times = timed(kind)
        out[kind] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                     "all_s": [round(t, 3) for t in times]}
        if cuda:
            out[kind]["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            out[kind]["peak_cuda_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    out["split"] = split(out)
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if cuda:
        out["peak_cuda_gib"] = max(out[k]["peak_cuda_gib"] for k in kinds)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--mode", nargs="+", default=["decoder", "full"], choices=["decoder", "full"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", type=Path, default=RESULTS / "step_time.json")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process: one config
    args = ap.parse_args(argv)

    if args.one:
        print(json.dumps(measure(args.batch[0], args.mode[0], args.steps, args.threads, args.device, args.size)))
        return 0

    rows = []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    report = {"benchmark": "step_time", "commit": commit, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "host_stall_fraction": host_stall_fraction(), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for mode in args.mode:
        for batch in args.batch:
            cmd = [sys.executable, __file__, "--one", "--batch", str(batch), "--mode", mode, "--steps",
                   str(args.steps), "--threads", str(args.threads), "--device", args.device, "--size", str(args.size)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
                print(f"batch {batch} {mode}: failed: {tail[0]}")
                rows.append({"batch": batch, "mode": mode, "error": tail[0]})
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"batch {batch}+{batch} {mode:7s}  joint {row['joint']['median_s']:6.2f} s "
                  f"(min {row['joint']['min_s']:.2f})  joint, SAM frozen {row['joint_frozen']['median_s']:6.2f} s  "
                  f"unimatch {row['unimatch']['median_s']:6.2f} s  peak RSS {row['peak_rss_gib']:.2f} GiB  "
                  f"encode {row['encode_per_slice_s'] or '-'} s/slice", flush=True)
            print(format_split(row), flush=True)
            args.out.write_text(json.dumps(report, indent=2))  # after every row: a killed run keeps its rows
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
