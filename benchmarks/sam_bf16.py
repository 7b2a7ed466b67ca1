"""Does SAM's mask decoder give the same masks under bf16 autocast as in float32? (CPU with AMX, or CUDA)

    python benchmarks/sam_bf16.py                 # phantom, 256 x 256, ground-truth boxes of its labeled slices
    python benchmarks/sam_bf16.py --device cuda

The bundled LiteMedSAM encodes the phantom's labeled slices once (float32); every ground-truth box is then
decoded twice, in float32 and under ``core.device.autocast`` (bf16 where the device has it). Printed: the
Dice between the two masks of each prompt, how many pixels differ, the largest logit difference, and the
fused labels' Dice against the ground truth each way. Inference only: SAM's training under bf16 is not checked.
"""

from __future__ import annotations

import argparse

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
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    data, _, _ = phantom(shape=(12, args.size, args.size))
    lab = data.labeled_indices()
    x = torch.from_numpy(np.stack([data.images[i] for i in lab]))[:, None].float().to(dev)
    y = torch.from_numpy(np.stack([data.labels[i] for i in lab]).astype(np.int64)).to(dev)
    sam = load_sam("litemedsam").to(dev).eval()
    prompts = prompts_from_labels(y, data.num_classes, bbox_shift=5, jitter=False).to(dev)
    with torch.no_grad():
        emb = sam.encode(x)
        l32, _ = sam.decode(emb, prompts.image_index, prompts.boxes, frame_size=args.size)
        with autocast(dev, True):
            l16, _ = sam.decode(emb, prompts.image_index, prompts.boxes, frame_size=args.size)
    l16 = l16.float()
    m32, m16 = l32 > 0, l16 > 0
    agree = [float(2 * (a & b).sum() / (a.sum() + b.sum()).clamp(min=1)) for a, b in zip(m32, m16)]
    print(f"{len(prompts)} prompts; mask Dice float32 vs autocast per prompt: {np.round(agree, 4).tolist()}")
    print(f"pixels that differ: {int((m32 != m16).sum())} of {m32.numel()}; "
          f"largest logit difference {float((l32 - l16).abs().max()):.3f}")
    for name, logits in (("float32", l32), ("autocast", l16)):
        fused, _ = fuse(logits, prompts, data.num_classes)
        dice = [float(2 * ((fused == k) & (y == k)).sum() / ((fused == k).sum() + (y == k).sum()))
                for k in range(1, data.num_classes)]
        print(f"{name:8s} fused Dice against the ground truth per class: {np.round(dice, 4).tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
