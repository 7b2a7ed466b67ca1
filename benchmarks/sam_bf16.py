"""Does SAM's mask decoder give the same masks under bf16 autocast as in float32, and how much faster? (CPU with
AMX / AVX512-BF16, or CUDA)

    python benchmarks/sam_bf16.py                 # phantom, 256 x 256, ground-truth boxes of its labeled slices
    python benchmarks/sam_bf16.py --device cuda
    python benchmarks/sam_bf16.py --start 0,3 --k 3 --threads 1   # whole Starts on ACDC val volumes, A/B
    python benchmarks/sam_bf16.py --encode 0,1,2,3 --threads 2     # the image encoder, ACDC val slices

The bundled LiteMedSAM encodes the phantom's labeled slices once (float32); every ground-truth box is then
decoded twice, in float32 and under ``core.device.autocast`` (bf16 where the device has it). Printed: the
Dice between the two masks of each prompt, how many pixels differ, the largest logit difference, and the
fused labels' Dice against the ground truth each way, and each way's decode time (median of ``--reps``,
the two alternating). Inference only: SAM's training under bf16 is not checked (the refiner decodes in bf16
only without gradients).

``--start``: the plugin's default Start (``benchmarks/volume_completion.py``'s ``start``, k painted slices) on
the given ACDC val volumes, twice each (the order alternating per volume): with the refiner's gradient-free
decodes under autocast (what ships) and with autocast switched off there. Prints wall time and mean Dice of
the unpainted slices each way.

``--encode``: every slice of the given ACDC val volumes that holds a structure, resized to 256 x 256, encoded
in float32 and under autocast (alternating, each timed), then each ground-truth box (2 px margin, as the quick
preset) decoded from either embedding as the refiner decodes (under autocast). Prints the encode time per
slice each way, the masks' agreement and the fused labels' Dice against the ground truth per class each way.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_samatch.core.data.datasets import phantom
from napari_samatch.core.device import autocast
from napari_samatch.core.sam import load_sam
from napari_samatch.core.sam.fusion import fuse
from napari_samatch.core.sam.prompts import prompts_from_labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--start", default="", help="comma-separated val.list indices: A/B of whole Starts")
    ap.add_argument("--k", type=int, default=3, help="painted slices per volume, with --start")
    ap.add_argument("--encode", default="", help="comma-separated val.list indices: the encoder in bf16")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.start:
        return start_ab(args)
    if args.encode:
        return encode_check(args)
    dev = torch.device(args.device)
    data, _, _ = phantom(shape=(12, args.size, args.size))
    lab = data.labeled_indices()
    x = torch.from_numpy(np.stack([data.images[i] for i in lab]))[:, None].float().to(dev)
    y = torch.from_numpy(np.stack([data.labels[i] for i in lab]).astype(np.int64)).to(dev)
    sam = load_sam("litemedsam").to(dev).eval()
    prompts = prompts_from_labels(y, data.num_classes, bbox_shift=5, jitter=False).to(dev)
    times: dict[str, list[float]] = {"float32": [], "autocast": []}
    with torch.no_grad():
        emb = sam.encode(x)
        for rep in range(args.reps):
            for name in (("float32", "autocast") if rep % 2 == 0 else ("autocast", "float32")):
                ctx = autocast(dev, True) if name == "autocast" else contextlib.nullcontext()
                t = time.perf_counter()
                with ctx:
                    logits, _ = sam.decode(emb, prompts.image_index, prompts.boxes, frame_size=args.size)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
                if name == "float32":
                    l32 = logits
                else:
                    l16 = logits.float()
    print("decode of all prompts, median [fastest, slowest]: " + ", ".join(
        f"{n} {statistics.median(v):.3f} s [{min(v):.3f}, {max(v):.3f}]" for n, v in times.items())
        + f"; ratio {statistics.median(times['autocast']) / statistics.median(times['float32']):.2f}")
    m32, m16 = l32 > 0, l16 > 0
    agree = [_dice(a, b) for a, b in zip(m32, m16)]
    print(f"{len(prompts)} prompts; mask Dice float32 vs autocast per prompt: {np.round(agree, 4).tolist()}")
    print(f"pixels that differ: {int((m32 != m16).sum())} of {m32.numel()}; "
          f"largest logit difference {float((l32 - l16).abs().max()):.3f}")
    for name, logits in (("float32", l32), ("autocast", l16)):
        fused, _ = fuse(logits, prompts, data.num_classes)
        dice = [float(2 * ((fused == k) & (y == k)).sum() / ((fused == k).sum() + (y == k).sum()))
                for k in range(1, data.num_classes)]
        print(f"{name:8s} fused Dice against the ground truth per class: {np.round(dice, 4).tolist()}")
    return 0


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()).clamp(min=1))


def encode_check(args) -> int:
    """The image encoder in float32 and under autocast on ACDC slices; masks from ground-truth boxes each way."""
    import torch.nn.functional as F

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import volume_completion as vc
    from napari_samatch.core.device import tune_cpu_allocator

    tune_cpu_allocator()  # as the engine does: the encoder's activations are not page-faulted in afresh
    dev = torch.device(args.device)
    sam = load_sam("litemedsam").to(dev).eval()
    vols = vc.load_volumes(argparse.Namespace(no_acdc=False, volumes=args.encode, limit=0, phantom=False))
    times: dict[str, list[float]] = {"float32": [], "autocast": []}
    agree, differ, total = [], 0, 0
    hits = {name: np.zeros((2, 4)) for name in times}  # per class: 2|A&B| and |A|+|B| summed over slices
    for _, image, labels in vols:
        for z in np.flatnonzero(labels.reshape(len(labels), -1).any(1)):
            img = torch.from_numpy(image[z])[None, None]
            img = (img - img.min()) / (img.max() - img.min()).clamp(min=1e-6)
            x = F.interpolate(img, size=(256, 256), mode="bilinear", align_corners=False).to(dev)
            y = F.interpolate(torch.from_numpy(labels[z]).float()[None, None], size=(256, 256),
                              mode="nearest")[:, 0].long().to(dev)
            prompts = prompts_from_labels(y, 4, bbox_shift=2, jitter=False).to(dev)
            masks = {}
            with torch.no_grad():
                for name in (("float32", "autocast") if z % 2 == 0 else ("autocast", "float32")):
                    ctx = autocast(dev, True) if name == "autocast" else contextlib.nullcontext()
                    t = time.perf_counter()
                    with ctx:
                        emb = sam.encode(x).float()
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - t)
                    with autocast(dev, True):
                        logits, _ = sam.decode(emb, prompts.image_index, prompts.boxes, frame_size=256)
                    masks[name] = logits.float()
                    fused, _ = fuse(masks[name], prompts, 4)
                    for c in range(1, 4):
                        hits[name][0, c] += 2 * float(((fused == c) & (y == c)).sum())
                        hits[name][1, c] += float((fused == c).sum() + (y == c).sum())
            a, b = masks["float32"] > 0, masks["autocast"] > 0
            agree += [_dice(m, n) for m, n in zip(a, b)]
            differ, total = differ + int((a != b).sum()), total + a.numel()
    print(f"{len(times['float32'])} slices, {len(agree)} boxes; encode per slice, median [fastest, slowest]: "
          + ", ".join(f"{n} {statistics.median(v):.3f} s [{min(v):.3f}, {max(v):.3f}]" for n, v in times.items())
          + f"; ratio {statistics.median(times['autocast']) / statistics.median(times['float32']):.2f}")
    print(f"mask Dice float32 vs autocast embeddings per box: median {np.median(agree):.4f}, lowest "
          f"{min(agree):.4f}; pixels that differ {differ} of {total}")
    for name, h in hits.items():
        dice = h[0, 1:] / np.maximum(h[1, 1:], 1)
        print(f"{name:8s} embeddings: fused Dice against the ground truth RV/Myo/LV {np.round(dice, 4).tolist()}, "
              f"mean {dice.mean():.4f}")
    return 0


def start_ab(args) -> int:
    """Whole Starts with the refiner's gradient-free decodes in bf16 (as shipped) and in float32."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import volume_completion as vc
    from napari_samatch.core.sam import refiner

    shipped = refiner.autocast
    vols = vc.load_volumes(argparse.Namespace(no_acdc=False, volumes=args.start, limit=0, phantom=False))
    rows = []
    for n, (name, image, labels) in enumerate(vols):
        picks = vc.painted_slices(labels, args.k)
        rest = [z for z in range(len(labels)) if z not in picks]
        for mode in (("autocast", "float32") if n % 2 == 0 else ("float32", "autocast")):
            refiner.autocast = shipped if mode == "autocast" else (lambda *a, **k: contextlib.nullcontext())
            t = time.perf_counter()
            out = vc.run_method("start", image, labels, picks, args.threads or torch.get_num_threads(), 0)
            rows.append((name, mode, time.perf_counter() - t, vc.mean_dice(vc.scores(out["pred"], labels, rest))))
            print(f"{name} {mode:8s} {rows[-1][2]:6.1f} s  mean Dice {rows[-1][3]:.4f}", flush=True)
    refiner.autocast = shipped
    for mode in ("autocast", "float32"):
        r = [x for x in rows if x[1] == mode]
        print(f"{mode:8s} median {statistics.median(x[2] for x in r):.1f} s, mean Dice {np.mean([x[3] for x in r]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
