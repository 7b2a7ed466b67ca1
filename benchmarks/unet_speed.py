"""How fast does the Match model (UNet) train on this CPU?

Times forward+backward of the UNet at 256x256 for batch 4 and batch 12, and one UniMatch-shaped step
(4 labeled + 4 unlabeled weak views with feature perturbation, then 2x4 strong views, one backward),
in float32 with the default (NCHW) and ``torch.channels_last`` layouts. Each configuration runs in a
fresh subprocess (so allocator state, thread pools and compile caches do not leak between them).
Optional variants: glibc malloc tuning (keeps freed memory instead of returning it to the OS),
bf16 autocast (changes the numerics: informational only) and ``torch.compile``.

    python benchmarks/unet_speed.py                 # default set, 2 threads
    python benchmarks/unet_speed.py --quick         # 64x64, for a smoke run
    python benchmarks/unet_speed.py --compile       # also try torch.compile
    python benchmarks/unet_speed.py --threads 1 --no-variants   # the core table only

Each row also counts its step's arithmetic (``torch.utils.flop_counter``) and prints GFLOP and GFLOP/s.

Prints a table and writes benchmarks/results/unet_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("results") / "unet_speed.json"


def _tune_malloc() -> bool:
    """Ask glibc to keep freed memory (no munmap/trim per step, so no page faults on reuse).

    By default every tensor above the mmap threshold (at most 32 MiB) is a fresh mmap that is
    unmapped on free, so each step page-faults (and zeroes) its activations again. With mmap off the
    main thread's heap keeps them. Process-wide and irreversible: for a CLI run, not a library import.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
        ok = libc.mallopt(m_mmap_max, 0)
        ok &= libc.mallopt(m_trim_threshold, 1 << 62)
        ok &= libc.mallopt(m_top_pad, 64 * 1024 * 1024)
        return bool(ok)
    except OSError:
        return False


def run_one(cfg: dict) -> dict:
    """Time one configuration in this process; returns seconds per iteration and context."""
    if cfg.get("malloc"):
        cfg["malloc_tuned"] = _tune_malloc()
    if cfg.get("omp_passive"):
        # Must be set before torch loads the OpenMP runtime: sleeping (not spinning) at barriers
        # matters when other processes compete for the cores.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import resource

    import torch

    from napari_samatch.core.match.losses import supervised_loss, unimatch_total, unsupervised_loss
    from napari_samatch.core.match.unet import UNet

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    size, batch = cfg["size"], cfg["batch"]
    fmt = torch.channels_last if cfg["layout"] == "channels_last" else torch.contiguous_format
    net = UNet().train().to(memory_format=fmt)
    fwd = net
    if cfg.get("compile"):
        fwd = torch.compile(net)
    params = [p for p in net.parameters()]
    img = lambda b: torch.rand(b, 1, size, size).contiguous(memory_format=fmt)  # noqa: E731
    lab = lambda b: torch.randint(0, 4, (b, size, size))  # noqa: E731
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.get("bf16", False))

    if cfg["kind"] == "fwdbwd":
        x, y = img(batch), lab(batch)

        def step() -> None:
            with autocast:
                loss = supervised_loss(fwd(x), y)
            loss.backward()

    else:  # a UniMatch step: batch = unlabeled batch size (labeled the same)
        x, y = img(batch), lab(batch)
        uw, s1, s2 = img(batch), img(batch), img(batch)
        pseudo, conf = lab(batch), torch.rand(batch, size, size)
        fp_start = batch if cfg.get("fp_unlabeled_only", True) else 0

        def step() -> None:
            with autocast:
                pred, pred_fp = fwd(torch.cat([x, uw]), need_fp=True, fp_start=fp_start)
                pred_fp = pred_fp[-batch:]
                ps1, ps2 = fwd(torch.cat([s1, s2])).chunk(2)
                loss = unimatch_total(
                    supervised_loss(pred[:batch], y),
                    unsupervised_loss(ps1, pseudo, conf),
                    unsupervised_loss(ps2, pseudo, conf),
                    unsupervised_loss(pred_fp, pseudo, conf),
                )
            loss.backward()

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:  # one untimed step: its arithmetic, to read the timings as a rate
        step()
    for p in params:
        p.grad = None
    gflop = counter.get_total_flops() / 1e9
    t0 = time.perf_counter()
    for _ in range(cfg["warmup"]):
        step()
        for p in params:
            p.grad = None
    first = time.perf_counter() - t0
    times, r0 = [], resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = time.process_time()
    for _ in range(cfg["repeats"]):
        t = time.perf_counter()
        step()
        for p in params:
            p.grad = None
        times.append(time.perf_counter() - t)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = cfg["repeats"]
    return {
        **cfg,
        "median_s": statistics.median(times),
        "gflop_per_iter": round(gflop, 2),
        "gflop_per_s": round(gflop / statistics.median(times), 1),
        "min_s": min(times),
        "cpu_s_per_iter": (time.process_time() - cpu0) / n,
        "page_faults_per_iter": (r1.ru_minflt - r0.ru_minflt) / n,
        "warmup_s": first,
        "torch": torch.__version__,
    }


def configs(args: argparse.Namespace) -> list[dict]:
    base = dict(size=args.size, threads=args.threads, warmup=1, repeats=args.repeats)
    if args.omp_passive:
        base["omp_passive"] = True
    out = []
    for batch in (4, 12):
        for layout in ("nchw", "channels_last"):
            out.append(dict(base, kind="fwdbwd", batch=batch, layout=layout))
    out.append(dict(base, kind="unimatch_step", batch=4, layout="nchw"))
    # the engine's own configuration at 1 + 1: channels-last, bf16, the labeled half's perturbed decode kept
    out.append(dict(base, kind="unimatch_step", batch=1, layout="channels_last", bf16=True, fp_unlabeled_only=False))
    if not args.no_variants:
        out.append(dict(base, kind="fwdbwd", batch=4, layout="nchw", malloc=True))
        out.append(dict(base, kind="fwdbwd", batch=4, layout="nchw", bf16=True))
        out.append(dict(base, kind="unimatch_step", batch=4, layout="nchw", fp_unlabeled_only=False))
    if args.compile:
        out.append(dict(base, kind="fwdbwd", batch=4, layout="nchw", compile=True, warmup=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="64x64, 2 repeats: a smoke run")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    ap.add_argument("--no-variants", action="store_true", help="skip the malloc / bf16 / fp-on-all rows")
    ap.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (shared machines)")
    ap.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one JSON config, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    if args.quick:
        args.size, args.repeats = 64, 2

    rows = []
    for cfg in configs(args):
        label = " ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("size", "threads", "warmup", "repeats"))
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps(cfg)],
                capture_output=True, text=True, timeout=args.timeout,
            )
            if proc.returncode:
                row = {**cfg, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            row = {**cfg, "error": f"timed out after {args.timeout:.0f} s"}
        rows.append(row)
        res = row.get("error") or (
            f"median {row['median_s']:.3f} s/iter, {row['gflop_per_iter']:.1f} GFLOP, "
            f"{row['gflop_per_s']:.0f} GFLOP/s, cpu {row['cpu_s_per_iter']:.3f} s, "
            f"faults {row['page_faults_per_iter']:.0f}, first {row['warmup_s']:.1f} s"
        )
        print(f"{label:<70} {res}", flush=True)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "size": args.size,
        "threads": args.threads,
        "note": "wall time on a shared machine; compare rows of one run, not runs",
    }
    args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
