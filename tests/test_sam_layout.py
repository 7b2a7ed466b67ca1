"""SAM's numerics and layouts on the CPU: the image tokens handed to the decoder's transformer, and the image
encoder's precision in decoder mode (``sam_encode_amp``). The real bundled LiteMedSAM weights."""

from __future__ import annotations

import pytest
import torch

from napari_samatch.core.config import preset
from napari_samatch.core.device import cpu_has_fast_bf16
from napari_samatch.core.sam import base, load_sam
from napari_samatch.core.sam.refiner import Refiner

torch.set_num_threads(1)

IMAGE_INDEX = torch.tensor([0, 0, 1, 1])
BOXES = torch.tensor([[30, 40, 120, 150], [100, 100, 200, 220], [10, 10, 60, 80], [0, 0, 255, 255]],
                     dtype=torch.float32)


@pytest.fixture(scope="module")
def lite():
    return load_sam("litemedsam")


def test_token_major_is_the_transformers_contiguous_view():
    """Channels-last embeddings make the two-way transformer's ``flatten(2).permute(0, 2, 1)`` contiguous."""
    x = torch.randn(3, 256, 8, 8)
    tokens = base.token_major(x).flatten(2).permute(0, 2, 1)
    assert tokens.is_contiguous()
    assert torch.equal(tokens, x.flatten(2).permute(0, 2, 1))


def test_decode_is_the_same_with_either_token_layout(lite, monkeypatch):
    """The layout changes memory order only: float32 logits and IoU as from NCHW tokens, to float32 noise."""
    emb = 0.5 * torch.randn(2, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, iou = lite.decode(emb, IMAGE_INDEX, boxes=BOXES)
        monkeypatch.setattr(base, "token_major", lambda x: x)
        old_logits, old_iou = lite.decode(emb, IMAGE_INDEX, boxes=BOXES)
    assert torch.allclose(logits, old_logits, atol=1e-3, rtol=0)
    assert torch.allclose(iou, old_iou, atol=1e-4, rtol=0)


@pytest.mark.parametrize("encode_amp", [False, True])
def test_decoder_mode_encodes_in_bf16_only_when_asked(lite, encode_amp):
    """``sam_encode_amp``: the cached embeddings come from an encoder under bf16 autocast when asked (on a CPU
    with fast bf16), float32 otherwise; either way the cache hands back float32 embeddings."""
    if encode_amp and not cpu_has_fast_bf16():
        pytest.skip("this CPU has no fast bf16, so autocast stays float32")
    config = preset("quick", size=64, device="cpu", sam_encode_amp=encode_amp)
    refiner = Refiner(lite, config, torch.device("cpu"))
    seen = []
    hook = lite.image_encoder.neck[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        emb = refiner.embeddings([0, 1], torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1)))
    finally:
        hook.remove()
    assert emb.dtype == torch.float32 and emb.shape == (2, 256, 64, 64)
    assert seen == [torch.bfloat16 if encode_amp else torch.float32] * 2


def test_the_encoder_runs_channels_last_on_a_cpu_with_the_same_embeddings(lite):
    """``SamBackend.encode`` keeps the image encoder's weights and its input channels-last on a CPU (oneDNN's
    native layout: 0.8x the encode time): the embeddings those of the NCHW encoder, to float32 rounding."""
    images = torch.rand(2, 1, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        emb = lite.encode(images)
        conv = next(m for m in lite.image_encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        lite.image_encoder.to(memory_format=torch.contiguous_format)
        ref = lite.image_encoder(images.expand(-1, 3, -1, -1))
        lite._encoder_format = torch.contiguous_format  # as found: encode converts again
        assert torch.allclose(emb, ref, atol=1e-4, rtol=0)
        assert torch.equal(lite.encode(images), emb)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("train_amp", "grad"), [(True, True), (True, False), (False, True)])
def test_full_mode_trains_the_encoder_in_bf16_only_when_asked(lite, train_amp, grad):
    """In `full` mode the encoder's forward that SAM learns from runs under bf16 autocast with
    ``sam_train_amp`` (on a CPU with fast bf16), the whole batch at once; an encode without gradients (eval
    mode) stays float32 and goes a slice at a time; the embeddings handed on are float32 either way."""
    if train_amp and grad and not cpu_has_fast_bf16():
        pytest.skip("this CPU has no fast bf16, so autocast stays float32")
    config = preset("quick", size=64, device="cpu", sam_mode="full", sam_train_amp=train_amp)
    refiner = Refiner(lite, config, torch.device("cpu"))
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    seen = []
    hook = lite.image_encoder.neck[0].register_forward_hook(lambda m, i, o: seen.append((o.dtype, o.shape[0])))
    try:
        with torch.set_grad_enabled(grad):
            emb = refiner.embeddings([0, 1], images)
    finally:
        hook.remove()
    assert emb.dtype == torch.float32 and emb.shape == (2, 256, 64, 64)
    if grad:
        assert seen == [(torch.bfloat16 if train_amp else torch.float32, 2)]
    else:
        assert seen == [(torch.float32, 1)] * 2
        with torch.no_grad():
            assert torch.allclose(emb, lite.encode(images), atol=1e-4, rtol=0)
