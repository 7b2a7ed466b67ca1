"""How many operations one joint step dispatches, and where from: the host's side of a GPU step, on any machine.

    python benchmarks/step_ops.py                       # batch 4 + 4, 256 px, decoder mode, as a GPU would run it
    python benchmarks/step_ops.py --batch 16 --as-cpu   # what this CPU dispatches instead

Why: on one H200 the joint step at 4 + 4 took 0.148 s while the GPU was busy for 0.064 s of it (docs/benchmarks.md,
"The GPU check"): the step waits on the host, which pays Python, the dispatcher and a kernel launch for every
operation. So the number of operations a step dispatches is what a GPU step's host time scales with, and it can be
counted on a CPU: the same Python runs, ATen dispatches the same operators. Counted with a ``TorchDispatchMode``
over one joint step after two warm-ups (the phantom, SAM trained in that step, cached embeddings), each operation
attributed to the innermost frame of this project's code (or of ``torch.optim``) that issued it; backward
operations go to the line that called ``backward()``.

``--as-gpu`` (the default) sets what differs on CUDA: SAM's prompts in runs of ``refiner.GPU_CHUNK`` (a CPU keeps
``DECODE_CHUNK`` / ``LEARN_CHUNK`` for memory) and the optimisers' ``foreach`` kernels (PyTorch's default for CUDA
tensors, a per-parameter loop on the CPU). Reported: all dispatched operations, those that launch work (views and
other metadata-only operators excluded), the top sources, and the operators that make a GPU wait for its stream
(``.item()`` / ``.tolist()``, ``nonzero``, ``unique``, ...) by line; ``torch.optim``'s are on host tensors there.
Writes ``benchmarks/results/step_ops.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# operators that only make a new view or read metadata: no kernel on a GPU
METADATA = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze", "select",
            "slice", "detach", "alias", "as_strided", "split", "split_with_sizes", "unbind", "chunk", "narrow",
            "view_as", "_reshape_alias", "unflatten", "flatten", "lift_fresh", "empty", "empty_strided",
            "is_same_size", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "result_type"}
# operators whose result the host must read before it can go on: each one drains a GPU's stream
SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
           "repeat_interleave", "equal", "is_nonzero"}


class Dispatched:
    """Counts the operations dispatched inside ``with Dispatched() as d:`` by operator (``d.by_op``), by the line of
    this project (or ``torch.optim``) that issued them (``d.by_source``), and the syncing ones by line (``d.syncing``)."""

    def __init__(self) -> None:
        self.by_op: collections.Counter = collections.Counter()
        self.by_source: collections.Counter = collections.Counter()
        self.syncing: collections.Counter = collections.Counter()
        self._modes: list = []

    @staticmethod
    def source(frame) -> str:
        while frame is not None:
            name = frame.f_code.co_filename.replace("\\", "/")
            if "/torch/optim/" in name:
                return "torch.optim (optimiser step)"
            if "napari_samatch/" in name:
                return f"{name.split('napari_samatch/')[-1]}:{frame.f_code.co_name}:{frame.f_lineno}"
            frame = frame.f_back
        return "(no project frame)"

    def __enter__(self) -> Dispatched:
        import torch
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                op, where = func.__name__.split(".")[0], counter.source(sys._getframe(1))
                counter.by_op[op] += 1
                counter.by_source[where] += 1
                if op in SYNCING:
                    counter.syncing[where] += 1
                return func(*args, **(kwargs or {}))

        class Reads(TorchFunctionMode):  # .tolist() and .numpy() dispatch nothing on a CPU; on a GPU they wait
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in (torch.Tensor.tolist, torch.Tensor.numpy) and args and args[0].numel() > 0:
                    counter.syncing[counter.source(sys._getframe(1))] += 1
                return func(*args, **(kwargs or {}))

        self._modes = [Reads(), Ops()]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def device_waits(self) -> collections.Counter:
        """The syncing operations but ``torch.optim``'s, whose step counters live on the host on a GPU too."""
        return collections.Counter({k: v for k, v in self.syncing.items() if not k.startswith("torch.optim")})


def count(batch: int, size: int, mode: str, as_gpu: bool, threads: int, chunk: int | None = None) -> dict:
    import torch

    from napari_samatch.core.config import preset
    from napari_samatch.core.data.datasets import phantom
    from napari_samatch.core.engine.engine import Engine
    from napari_samatch.core.sam import refiner as refiner_module

    if as_gpu or chunk:
        refiner_module.DECODE_CHUNK = refiner_module.LEARN_CHUNK = chunk or refiner_module.GPU_CHUNK
    data, _, _ = phantom(shape=(max(12, 2 * batch + 4), size, size))
    config = preset("standard", size=size, batch_labeled=batch, batch_unlabeled=batch, sam_mode=mode, device="cpu",
                    threads=threads, eval_every=0, checkpoint_every=0, sam_every=1)
    engine = Engine(data, config.replace(num_classes=data.num_classes, class_names=list(data.class_names)))
    engine.sam_optimizer()
    if as_gpu:
        for opt in (engine.opt_unet, engine.opt_sam):
            for group in opt.param_groups:
                group["foreach"] = True
    if mode == "decoder":  # every slice's embedding cached, as after a run's first steps
        with torch.no_grad():
            engine.refiner.embeddings(list(range(len(data))), engine.images)
    for _ in range(2):  # the optimisers' states
        engine.step("joint")
    with Dispatched() as d:
        engine.step("joint")
    functions: collections.Counter = collections.Counter()
    for where, n in d.by_source.items():
        functions[where.rsplit(":", 1)[0]] += n
    waits = d.device_waits()
    return {"batch": [batch, batch], "size": size, "mode": mode, "as_gpu": as_gpu,
            "chunks": {"decode": refiner_module.DECODE_CHUNK, "learn": refiner_module.LEARN_CHUNK},
            "dispatched": sum(d.by_op.values()),
            "launching": sum(n for op, n in d.by_op.items() if op not in METADATA),
            "device_waits": sum(waits.values()), "by_function": dict(functions.most_common(20)),
            "by_operator": dict(d.by_op.most_common(20)), "device_waits_by_line": dict(waits.most_common(20))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4, help="labeled and unlabeled slices a step (default 4)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--mode", choices=["decoder", "full"], default="decoder")
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--as-gpu", dest="as_gpu", action="store_true", default=True,
                      help="SAM's runs and the optimisers as on CUDA (default)")
    kind.add_argument("--as-cpu", dest="as_gpu", action="store_false", help="as this CPU runs the step")
    ap.add_argument("--chunk", type=int, help="SAM's prompts a run instead (refiner.GPU_CHUNK as on a GPU; 4 on a CPU)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "step_ops.json")
    args = ap.parse_args(argv)
    row = count(args.batch, args.size, args.mode, args.as_gpu, args.threads, args.chunk)
    print(f"batch {args.batch} + {args.batch}, {args.size} px, {args.mode}, "
          f"{'as on a GPU' if args.as_gpu else 'as on this CPU'} (SAM's runs: decode {row['chunks']['decode']}, "
          f"learn {row['chunks']['learn']} prompts): {row['dispatched']} operations dispatched, "
          f"{row['launching']} of them launch work, {row['device_waits']} make the host wait for the device")
    for name, n in list(row["by_function"].items())[:12]:
        print(f"  {n:6d}  {name}")
    print("  the host waits at:", ", ".join(f"{k} x{v}" for k, v in row["device_waits_by_line"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
