"""Where the joint step's memory goes: RSS and peak after each phase of a few steps, in one process.

    python benchmarks/step_memory.py                         # batch 4 + 4, decoder mode, 256 px, 2 threads
    python benchmarks/step_memory.py --set sam_train_amp=false

The bundled phantom (12 slices); phases: the engine and LiteMedSAM loaded, every slice encoded, UniMatch
steps (the Match model alone), joint steps with SAM frozen (its refinement added), joint steps with SAM
training (its decodes with gradients added). Each row's peak minus the one before is what that kind of
step adds.

Then, for the last phase, where that peak goes: the bytes autograd keeps for the backward pass of the Match
model's forwards in one step and of SAM's largest learning chunk (counted as they are saved, each storage
once), in `full` mode also of the image encoder's forward for one batch; the embedding cache; the weights
with their gradients and optimizer states; and the rest of the peak (Python and the libraries, the encoder's
working memory, what the allocator holds on to).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from _memory import PhaseLog
from _protocol import RESULTS

MIB = 2**20


class SavedBytes:
    """Counts what autograd saves for the backward inside ``with counter.track(name):`` (storages once)."""

    def __init__(self) -> None:
        self.now: dict[str, dict[int, int]] = {}
        self.peak: dict[str, int] = {}

    def track(self, name: str):
        seen = self.now.setdefault(name, {})

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return t

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    def close(self, name: str) -> None:
        """One graph (a step's Match model forwards, one learning chunk) is complete: keep its total if largest."""
        self.peak[name] = max(self.peak.get(name, 0), sum(self.now.pop(name, {}).values()))


def instrument(engine, counter: SavedBytes) -> None:
    """Wrap the Match model's forward and SAM's decodes with gradients so that their saved bytes are counted."""
    unet, refiner = engine.train_unet, engine.refiner
    unet_forward, decode, embeddings, step = unet.forward, refiner.decode, refiner.embeddings, engine.step

    def counted_forward(*a, **k):
        with counter.track("match"):
            return unet_forward(*a, **k)

    def counted_decode(*a, **k):
        if not torch.is_grad_enabled():
            return decode(*a, **k)
        with counter.track("sam_chunk"):
            out = decode(*a, **k)
        counter.close("sam_chunk")  # a chunk's graph is freed by its own backward right after
        return out

    def counted_embeddings(*a, **k):  # `full` mode: the encoder's forward SAM learns from
        if not (torch.is_grad_enabled() and refiner.trains_encoder):
            return embeddings(*a, **k)
        with counter.track("sam_encoder"):
            out = embeddings(*a, **k)
        counter.close("sam_encoder")
        return out

    def counted_step(*a, **k):
        out = step(*a, **k)
        counter.close("match")
        return out

    unet.forward, refiner.decode, refiner.embeddings, engine.step = (counted_forward, counted_decode,
                                                                     counted_embeddings, counted_step)


def state_bytes(engine) -> int:
    """Weights (both models, LiteMedSAM's encoder included), their gradients and the optimizers' states."""
    tensors = {}
    for model in (engine.train_unet, engine.sam):
        for t in list(model.parameters()) + list(model.buffers()):
            tensors[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            if t.grad is not None:
                tensors[t.grad.untyped_storage().data_ptr()] = t.grad.untyped_storage().nbytes()
    for opt in (engine.opt_unet, engine.opt_sam):
        for state in (opt.state.values() if opt is not None else ()):
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    tensors[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
    return sum(tensors.values())


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
    counter = SavedBytes()
    instrument(engine, counter)
    steps("samatch", 1, 0)
    log.phase("sam-trains")
    peak = log.phases[-1]["peak_rss_mib"]
    parts = {"match_graph": counter.peak.get("match", 0) / MIB, "sam_chunk_graph": counter.peak.get("sam_chunk", 0) / MIB,
             "sam_encoder_graph": counter.peak.get("sam_encoder", 0) / MIB,
             "embedding_cache": engine.refiner.cache.bytes_in_memory / MIB, "weights_grads_optimizers": state_bytes(engine) / MIB,
             "imports": log.phases[0]["rss_mib"]}
    parts["rest"] = peak - sum(parts.values())
    print("where the peak goes (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items()))
    log.write(Path(args.out), args, peak_parts_mib={k: round(v, 1) for k, v in parts.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
