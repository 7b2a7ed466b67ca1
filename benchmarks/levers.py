"""Speed levers for the joint step, A/B side by side in one process, repetitions interleaved.

    python benchmarks/levers.py --batch 1 --reps 9 --levers contiguous_unet fp_unlabeled_only bf16_step
    python benchmarks/levers.py --batch 4 --reps 5 --levers sam_prompts_4

On a machine shared with other work, absolute times drift from minute to minute; comparing a lever
with the baseline measured an hour earlier mixes the lever with the drift. Here one engine (the bundled
phantom, ``decoder`` mode, embeddings cached first) runs the baseline and every lever in turn within
each repetition, in a fresh random order per repetition, each step on the same data and augmentation
(the generators are reseeded per repetition). Reported per lever: median, min and max step time, and the
median of the per-repetition ratios lever / baseline (paired, so slow minutes cancel).

Levers (none changes the code under test; each is switched on and off around one step):
  contiguous_unet    the Match model's weights in the NCHW layout (channels-last on a CPU by default since
                     2026-12-04, when this lever was ``channels_last`` and measured the other way round)
  fp_unlabeled_only  feature perturbation decoded for the unlabeled half only (``UNet(fp_start=bx)``)
  bf16_step          the whole step under the engine's autocast (SAM too; bf16 where the CPU has it)
  fp32_unet          the Match model without autocast (the engine's default is bf16 on AMX CPUs)
  sam_train_fp32     SAM's training decodes in float32 (``RunConfig.sam_train_amp`` off; on by default since
                     2026-12-04, when this lever was ``sam_train_amp`` and measured the other way round)
  sam_prompts_K      SAM learns from K random prompts in each of its two losses (``RunConfig.sam_train_prompts``)
  learn_chunk_K      SAM's losses backpropagated K prompts at a time (``core.sam.refiner.LEARN_CHUNK``, 4; a K of
                     at least the step's prompt count is one backward per loss, as before 2026-12-05)
  decode_chunk_K     SAM's decodes without gradients K prompts at a time (``core.sam.refiner.DECODE_CHUNK``, 4;
                     8 before 2026-12-05)
  stock_upscaling    SAM's mask upscaling through the decoder's own modules (``core.sam.upscaling``
                     computes it in the tokens' layout by default since 2026-12-04)
  nchw_tokens        SAM's decoder given its image embeddings and positional encoding as NCHW, as before
                     2026-12-05 (``core.sam.base.token_major`` stores them channels-last)
  stock_two_way      SAM's two-way transformer run per prompt throughout, as before 2026-12-06
                     (``core.sam.two_way`` computes its first layer's image-side projections once per slice)
  flat_chunks        SAM's decodes cut every ``DECODE_CHUNK`` / ``LEARN_CHUNK`` prompts wherever that falls, as
                     before 2026-12-06 (``core.sam.refiner.chunks`` cuts between slices where it can)
  stock_dropout      the Match model's dropout masks from ``bernoulli_`` (``F.dropout``), as before 2026-12-06
                     (``core.match.unet.MaskDropout`` draws them from random bits on a CPU)
  compiled_unet      the Match model through ``torch.compile`` (inductor; on a CPU it needs a C++ compiler;
                     compiled once, in the first warm-up repetition, so the warm-ups absorb it)
  a+b                both levers at once
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import time
from pathlib import Path
from unittest import mock

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"


class FpUnlabeledOnly(nn.Module):
    """Passes ``fp_start`` = the labeled batch size whenever the step asks for feature perturbation."""

    def __init__(self, unet: nn.Module, bx: int) -> None:
        super().__init__()
        self.unet, self.bx = unet, bx

    def forward(self, x, need_fp: bool = False):
        if not need_fp:
            return self.unet(x)
        logits, fp = self.unet(x, need_fp=True, fp_start=self.bx)
        # unimatch_step slices logits_fp[bx:]; pad the front so its indexing is unchanged
        return logits, torch.cat([fp.new_zeros((self.bx, *fp.shape[1:])), fp])


@contextlib.contextmanager
def settings(engine, sam_too: bool = True, **changes):
    """RunConfig changes for the block: the engine's, and (``sam_too``) the SAM refiner's own copy."""
    saved = engine.config, engine.refiner.config if sam_too else None
    engine.config = saved[0].replace(**changes)
    if sam_too:
        engine.refiner.config = saved[1].replace(**changes)
    try:
        yield
    finally:
        engine.config = saved[0]
        if sam_too:
            engine.refiner.config = saved[1]


@contextlib.contextmanager
def lever(engine, name: str):
    """Switch one lever on for the duration of the block."""
    from napari_samatch.core.device import autocast

    if name == "baseline":
        yield
    elif name == "contiguous_unet":
        engine.unet.to(memory_format=torch.contiguous_format)
        try:
            yield
        finally:
            engine.unet.to(memory_format=torch.channels_last)
    elif name == "fp_unlabeled_only":
        with mock.patch.object(engine, "train_unet", FpUnlabeledOnly(engine.unet, engine.config.batch_labeled)):
            yield
    elif name == "stock_upscaling":
        from napari_samatch.core.sam import upscaling

        with mock.patch.object(upscaling, "fusable", lambda module: False):
            yield
    elif name == "stock_two_way":
        from napari_samatch.core.sam import base

        with mock.patch.object(base, "two_way", lambda t, images, pos, tokens, index: t(images[index], pos, tokens)):
            yield
    elif name == "flat_chunks":
        from napari_samatch.core.sam import refiner

        def flat(image_index, size):
            return [(i, min(i + size, len(image_index))) for i in range(0, len(image_index), size)]

        with mock.patch.object(refiner, "chunks", flat):
            yield
    elif name == "nchw_tokens":
        from napari_samatch.core.sam import base

        with mock.patch.object(base, "token_major", lambda x: x):
            yield
    elif name == "stock_dropout":
        from napari_samatch.core.match import unet

        stock = lambda self, x: torch.nn.functional.dropout(x, self.p, self.training)  # noqa: E731
        with mock.patch.object(unet.MaskDropout, "forward", stock):
            yield
    elif name == "compiled_unet":
        if not hasattr(engine, "_compiled_unet"):  # one compiled module for every repetition
            engine._compiled_unet = torch.compile(engine.unet)
        with mock.patch.object(engine, "train_unet", engine._compiled_unet):
            yield
    elif name == "bf16_step":
        with autocast(engine.device, True):
            yield
    elif name == "fp32_unet":
        with settings(engine, sam_too=False, amp=False):
            yield
    elif name == "sam_train_fp32":
        with settings(engine, sam_train_amp=False):
            yield
    elif name.startswith(("learn_chunk_", "decode_chunk_")):
        from napari_samatch.core.sam import refiner

        constant = "LEARN_CHUNK" if name.startswith("learn") else "DECODE_CHUNK"
        with mock.patch.object(refiner, constant, int(name.rsplit("_", 1)[1])):
            yield
    elif name.startswith("sam_prompts_"):
        with settings(engine, sam_train_prompts=int(name.rsplit("_", 1)[1])):
            yield
    else:
        raise SystemExit(f"levers.py: unknown lever {name!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levers", nargs="+", default=["contiguous_unet", "fp_unlabeled_only", "bf16_step"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--kind", choices=["joint", "unimatch", "sam"], default="joint",
                    help="joint: the SAM-Match step; unimatch: without SAM; sam: SAM's own step on labeled slices")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "levers.json")
    args = ap.parse_args(argv)

    from napari_samatch.core.config import preset
    from napari_samatch.core.data.datasets import phantom
    from napari_samatch.core.engine.engine import Engine

    data, _, _ = phantom(shape=(max(8, 2 * args.batch + 4), args.size, args.size))
    config = preset("standard", size=args.size, batch_labeled=args.batch, batch_unlabeled=args.batch,
                    sam_mode="decoder", device="cpu", threads=args.threads, eval_every=0, checkpoint_every=0,
                    sam_every=1, method="samatch" if args.kind == "joint" else "unimatch")
    config = config.replace(num_classes=data.num_classes, class_names=list(data.class_names))
    engine = Engine(data, config)
    if args.kind in ("joint", "sam"):
        engine.sam_optimizer()
        with torch.no_grad():
            engine.refiner.embeddings(list(range(len(data))), engine.images)
    names = ["baseline", *args.levers]
    times: dict[str, list[float]] = {n: [] for n in names}
    order_rng = random.Random(0)
    for rep in range(args.warmup + args.reps):
        order = names[:]
        order_rng.shuffle(order)
        for name in order:
            engine.gen.manual_seed(rep)  # the same batch, augmentation and dropout for every lever
            engine.rank_gen.manual_seed(rep)
            torch.manual_seed(rep)
            engine.stage_iter = 0  # SAM trains in this step (sam_every 1)
            with contextlib.ExitStack() as stack:
                for part in name.split("+"):  # "a+b": both levers at once
                    stack.enter_context(lever(engine, part))
                t = time.perf_counter()
                engine.step("sam" if args.kind == "sam" else "joint")
                dt = time.perf_counter() - t
            if rep >= args.warmup:
                times[name].append(dt)
        if rep >= args.warmup:
            print(f"rep {rep - args.warmup + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f}" for n in names), flush=True)

    rows = {}
    base = times["baseline"]
    for n in names:
        ratios = [t / b for t, b in zip(times[n], base)]
        rows[n] = {"median_s": round(statistics.median(times[n]), 4), "min_s": round(min(times[n]), 4),
                   "max_s": round(max(times[n]), 4), "paired_ratio_median": round(statistics.median(ratios), 3),
                   "paired_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
                   "all_s": [round(t, 4) for t in times[n]]}
    print(f"\n{args.kind} step, batch {args.batch}+{args.batch}, {args.size} px, {args.threads} thread(s), "
          f"{args.reps} interleaved repetitions after {args.warmup} warm-ups:")
    print(f"{'lever':20s} {'median':>8s} {'min':>8s} {'max':>8s}  ratio to baseline (median, range of pairs)")
    for n, r in rows.items():
        print(f"{n:20s} {r['median_s']:8.3f} {r['min_s']:8.3f} {r['max_s']:8.3f}  {r['paired_ratio_median']:.3f} "
              f"[{r['paired_ratio_range'][0]:.3f}, {r['paired_ratio_range'][1]:.3f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
