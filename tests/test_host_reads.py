"""What a joint step reads back from the device: on a GPU every read makes the host wait for the device, and the
H200's step at 4 + 4 waited on the host (docs/benchmarks.md, "The GPU check"). The reads are counted on the CPU
with ``benchmarks/step_ops.py``'s counter (the same Python runs either way): the Match model's losses and the
prior's fusion read nothing, the step's log is read once at its end, and on a GPU SAM's prompts go through the
decoder in long runs (fewer launches) while a CPU keeps its runs of 4 (memory)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from napari_samatch.core.config import preset
from napari_samatch.core.data.datasets import phantom
from napari_samatch.core.engine.engine import Engine
from napari_samatch.core.sam import refiner as refiner_module
from napari_samatch.core.sam.prompts import Prompts
from napari_samatch.core.sam.refiner import Refiner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from step_ops import Dispatched  # noqa: E402


def test_a_joint_step_reads_its_losses_back_once():
    data, _, _ = phantom(shape=(8, 64, 64))
    config = preset("standard", size=64, batch_labeled=2, batch_unlabeled=2, device="cpu", threads=2, eval_every=0,
                    checkpoint_every=0, sam_every=1).replace(num_classes=data.num_classes,
                                                             class_names=list(data.class_names))
    engine = Engine(data, config)
    engine.sam_optimizer()
    engine.step("joint")  # encodes the slices it draws, makes the optimisers' states
    with Dispatched() as d:
        logs = engine.step("joint")
    assert {"loss", "loss_x", "loss_s", "loss_fp", "loss_sam_u", "loss_sam_x", "mask_ratio"} <= set(logs)
    assert all(isinstance(v, float) for v in logs.values())
    waits = d.device_waits()
    assert sum(waits.values()) > 0  # the counter sees reads (the prompts' boxes need some)
    where = {line.rsplit(":", 1)[0]: 0 for line in waits}
    for line, n in waits.items():
        where[line.rsplit(":", 1)[0]] += n
    for quiet in ("core/match/losses.py", "core/prior/prior.py", "core/engine/steps.py"):
        assert not any(w.startswith(quiet) for w in where if not w.endswith("read_logs")), (quiet, waits)
    assert where.get("core/engine/steps.py:read_logs") == 1
    assert where.get("core/sam/fusion.py:fuse", 0) <= 1


def test_sams_runs_are_long_on_a_gpu_only():
    """24 prompts of 8 slices: one run on a GPU, runs of at most ``LEARN_CHUNK`` that keep a slice's prompts
    together on a CPU."""
    n = 24
    prompts = Prompts(image_index=torch.arange(8).repeat_interleave(3), class_index=torch.tensor([1, 2, 3]).repeat(8),
                      boxes=torch.zeros(n, 4), points=None, point_labels=None, scores=torch.ones(n), num_images=8,
                      frame_size=(64, 64))
    on = {kind: Refiner.runs(SimpleNamespace(device=torch.device(kind)), prompts, refiner_module.LEARN_CHUNK)
          for kind in ("cpu", "cuda")}
    assert on["cuda"] == [(0, 24)] and refiner_module.GPU_CHUNK >= n
    assert on["cpu"] == [(i, i + 3) for i in range(0, 24, 3)]
