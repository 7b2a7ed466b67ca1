"""Where the joint step's memory goes: RSS and peak after each phase of a few steps, in one process.

    python benchmarks/step_memory.py                         # batch 4 + 4, decoder mode, 256 px, 2 threads
    python benchmarks/step_memory.py --set sam_train_amp=false

The bundled phantom (12 slices); phases: the engine and LiteMedSAM loaded, every slice encoded, UniMatch
steps (the Match model alone), joint steps with SAM frozen (its refinement added), joint steps with SAM
training (its decodes with gradients added). Each row's peak minus the one before is what that kind of
step adds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from _memory import PhaseLog
from _protocol import RESULTS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--mode", choices=["decoder", "full"], default="decoder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="steps of each kind")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any RunConfig setting")
    ap.add_argument("--out", default=str(RESULTS / "step_memory.json"))
    args = ap.parse_args(argv)

    log = PhaseLog()
    log.phase("start")
    from napari_samatch.core.config import preset
    from napari_samatch.core.data.datasets import phantom
    from napari_samatch.core.engine.engine import Engine

    data, _, _ = phantom(shape=(max(12, 2 * args.batch + 4), args.size, args.size))
    extra = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = preset("standard", size=args.size, batch_labeled=args.batch, batch_unlabeled=args.batch,
                    sam_mode=args.mode, device="cpu", threads=args.threads, eval_every=0, checkpoint_every=0,
                    sam_every=1, num_classes=data.num_classes, class_names=list(data.class_names), **extra)
    engine = Engine(data, config)
    engine.refiner  # loads SAM
    engine.sam_optimizer()
    log.phase("loaded")
    if args.mode == "decoder":
        with torch.no_grad():
            engine.refiner.embeddings(list(range(len(data))), engine.images)
        log.phase("encoded")

    def steps(method: str, sam_every: int, first_iter: int) -> None:
        engine.config = engine.config.replace(method=method, sam_every=sam_every)
        for i in range(args.steps):
            engine.stage_iter = first_iter  # sam_every 2 at an odd iteration: SAM frozen
            engine.step("joint")

    steps("unimatch", 1, 0)
    log.phase("unimatch")
    steps("samatch", 2, 1)
    log.phase("sam-frozen")
    steps("samatch", 1, 0)
    log.phase("sam-trains")
    log.write(Path(args.out), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
