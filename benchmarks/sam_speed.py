"""LiteMedSAM speed on this machine: encode, batched decode, decode + backward, peak RSS.

    python benchmarks/sam_speed.py [--repeats 3] [--device cpu]

Prints the numbers and writes benchmarks/results/sam_speed.json. Times are medians over ``--repeats``
runs after a warm-up; inputs are random (speed does not depend on pixel values). The load average is
recorded too: on a shared machine it explains most of the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from napari_samatch.core.sam import load_sam


def _median_time(fn, repeats: int, sync, warmup: bool = True) -> float:
    if warmup:  # allocator, oneDNN kernel selection
        fn()
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sam_speed.json")
    args = parser.parse_args(argv)

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = load_sam("litemedsam", device=dev)
    results: dict = {"device": str(dev), "cpu": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                     "torch": torch.__version__, "repeats": args.repeats, "encode_s_per_image": {}}
    gen = torch.Generator().manual_seed(0)

    for threads in args.threads:
        torch.set_num_threads(threads)
        with torch.no_grad():  # one cheap warm-up per thread count (an encode is ~75 GFLOP)
            model.encode(torch.rand(1, 1, 256, 256, generator=gen).to(dev))
        for batch in (1, 8):
            images = torch.rand(batch, 1, 256, 256, generator=gen).to(dev)
            with torch.no_grad():
                t = _median_time(lambda x=images: model.encode(x), args.repeats, sync, warmup=False)
            results["encode_s_per_image"][f"threads{threads}_batch{batch}"] = t / batch
            print(f"encode  threads={threads} batch={batch}: {t / batch:.3f} s/image")

    torch.set_num_threads(max(args.threads))
    emb = torch.randn(4, 256, 64, 64, generator=gen).to(dev)
    index = torch.arange(4).repeat_interleave(3).to(dev)  # 12 prompts: 3 classes x 4 images
    xy = torch.randint(0, 128, (12, 2), generator=gen).float()
    boxes = torch.cat([xy, xy + 64 + torch.randint(0, 64, (12, 2), generator=gen)], 1).to(dev)
    with torch.no_grad():
        t_dec = _median_time(lambda: model.decode(emb, index, boxes, frame_size=256), args.repeats, sync)
    print(f"decode  12 prompts / 4 images (threads={max(args.threads)}): {t_dec:.3f} s")

    model.freeze_for("decoder").train()
    target = (torch.rand(12, 256, 256, generator=gen) > 0.5).float().to(dev)

    def step() -> None:
        logits, iou = model.decode(emb, index, boxes, frame_size=256)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + iou.mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    t_bwd = _median_time(step, args.repeats, sync)
    print(f"decode+backward 12 prompts, 'decoder' mode (threads={max(args.threads)}): {t_bwd:.3f} s")

    results.update({
        "load_average_at_end": os.getloadavg(),
        "decode_12_prompts_4_images_s": t_dec,
        "decode_backward_12_prompts_decoder_mode_s": t_bwd,
        "decode_threads": max(args.threads),
        "peak_rss_mb": _peak_rss_mb(),
    })
    if dev.type == "cuda":
        results["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(f"peak RSS: {results['peak_rss_mb']:.0f} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
