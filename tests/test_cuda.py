"""The core on a CUDA GPU: SAM encode/decode, every kind of engine step under bf16 autocast, a whole run,
and a checkpoint written there that resumes on the CPU.

Skipped without CUDA. ``benchmarks/gpu_check.sh`` runs this file on the GPU machine; its ``--dry-run``
sets ``SAMATCH_TEST_DEVICE=cpu`` so that the same tests run (slowly) on a CPU and the file itself stays
tested where no GPU is.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_samatch.core.config import preset
from napari_samatch.core.data.datasets import phantom
from napari_samatch.core.device import autocast
from napari_samatch.core.engine import events as ev
from napari_samatch.core.engine.engine import Engine
from napari_samatch.core.sam.prompts import prompts_from_labels


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("SAMATCH_TEST_DEVICE") == "cpu":
        return torch.device("cpu")
    pytest.skip("no CUDA device (benchmarks/gpu_check.sh runs these on a GPU)")


@pytest.fixture(scope="module")
def sample():
    data, _, _ = phantom(shape=(8, 96, 96))
    return data


def tiny(data, device, **kw):
    base = dict(size=64, warmup_iters=2, sam_iters=2, joint_iters=2, batch_labeled=2, batch_unlabeled=2,
                eval_every=0, checkpoint_every=0, device=device.type, threads=1, sam_every=1)
    base.update(kw)
    return preset("quick", **base).replace(num_classes=data.num_classes, class_names=list(data.class_names))


def test_sam_encode_and_decode_agree_with_the_cpu(device, sample):
    """The same LiteMedSAM on the device and on the CPU: embeddings and the mask from a true box agree."""
    from napari_samatch.core.sam import load_sam

    x = torch.from_numpy(np.stack(sample.images[:2]))[:, None].float()
    y = torch.from_numpy(sample.labels[sample.labeled_indices()[0]].astype(np.int64))[None]
    prompts = prompts_from_labels(y, sample.num_classes, bbox_shift=3, jitter=False)
    out = {}
    for dev in (torch.device("cpu"), device):
        sam = load_sam("litemedsam").to(dev).eval()
        with torch.no_grad():
            emb = sam.encode(x.to(dev))
            logits, iou = sam.decode(emb[[0]], prompts.image_index.to(dev), prompts.boxes.to(dev), frame_size=96)
        assert emb.device.type == dev.type and emb.shape == (2, 256, 64, 64)
        out[dev.type] = (emb.float().cpu(), (logits > 0).cpu(), iou.float().cpu())
    (e_cpu, m_cpu, _), (e_dev, m_dev, _) = out["cpu"], out[device.type]
    assert torch.allclose(e_cpu, e_dev, atol=5e-2 * float(e_cpu.abs().max()))  # TF32 convs on the GPU
    inter = (m_cpu & m_dev).sum().item()
    assert 2 * inter / max(m_cpu.sum().item() + m_dev.sum().item(), 1) > 0.98


def test_autocast_is_bf16_on_cuda(device):
    lin = torch.nn.Linear(8, 8).to(device)
    with autocast(device):
        out = lin(torch.ones(2, 8, device=device))
    if device.type == "cuda":
        assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("method,mode", [("supervised", "decoder"), ("unimatch", "decoder"),
                                         ("samatch", "decoder"), ("samatch", "full")])
def test_every_step_kind_trains_on_the_device(device, sample, method, mode):
    engine = Engine(sample, tiny(sample, device, method=method, sam_mode=mode))
    assert engine.device.type == device.type and next(engine.unet.parameters()).device.type == device.type
    if method == "samatch":
        engine.sam_optimizer()
        before = [p.detach().clone() for p in engine.sam.trainable_parameters(mode)]
    w0 = engine.unet.head.weight.detach().clone()
    for i in range(2):
        engine.stage_iter = i
        logs = engine.step("joint")
        assert all(np.isfinite(v) for v in logs.values()), logs
    assert not torch.equal(w0, engine.unet.head.weight)
    if method == "samatch":
        assert "loss_sam_x" in logs and "loss_sam_u" in logs
        after = engine.sam.trainable_parameters(mode)
        assert any(not torch.equal(b, a.detach()) for b, a in zip(before, after))
        if mode == "full":  # the encoder trains too
            assert any(p.grad is not None for p in engine.sam.image_encoder.parameters())


def test_a_run_on_the_device_resumes_on_the_cpu(device, sample, tmp_path):
    """All three stages with validation on the device; its checkpoint loads on the CPU and predicts the same."""
    seen: list[ev.Event] = []
    engine = Engine(sample, tiny(sample, device, eval_every=2), val=sample.subset(sample.labeled_indices()))
    summary = engine.run(seen.append, checkpoint_dir=tmp_path)
    assert not summary["stopped"] and [e.kind for e in seen][-1] == ev.DONE
    assert any(e.kind == ev.METRICS for e in seen)
    # compared without autocast: a barely trained model has near-ties that bf16 rounding would flip
    engine.config = engine.config.replace(amp=False)
    on_device = engine.predict([0, 1]).float().cpu()
    resumed = Engine.from_checkpoint(tmp_path / "last.pt", sample, device="cpu", amp=False)
    assert resumed.device.type == "cpu" and resumed.stage_index == 3
    on_cpu = resumed.predict([0, 1]).float()
    assert (on_device.argmax(1) == on_cpu.argmax(1)).float().mean() > 0.99
    assert torch.allclose(on_device, on_cpu, atol=2e-2)


def test_host_made_tensors_reach_the_device_without_a_stream_sync(device):
    """``to_device`` gives ``.to(device)``'s values; on a GPU it must not synchronise (with the sync debug mode set to
    "error" a blocking host-to-device copy raises), so the host can keep queueing work while the GPU runs."""
    from napari_samatch.core.device import to_device

    draws = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_sync_debug_mode("error")
    try:
        moved = to_device(draws, device)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    assert moved.device.type == device.type
    assert torch.equal(moved.cpu(), draws)
