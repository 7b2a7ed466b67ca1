"""SAM's two-way transformer with its first layer's image side computed once per slice (core/sam/two_way.py):
the stock per-prompt forward's logits, IoU and gradients. The real bundled LiteMedSAM weights."""

from __future__ import annotations

import pytest
import torch

from napari_samatch.core.sam import base, load_sam
from napari_samatch.core.sam.two_way import shareable, two_way

torch.set_num_threads(1)

# prompts out of order, three on one slice, and a slice (2) no prompt uses
IMAGE_INDEX = torch.tensor([3, 0, 0, 3, 1, 0, 3])
BOXES = torch.tensor([[30, 40, 120, 150], [100, 100, 200, 220], [10, 10, 60, 80], [0, 0, 255, 255],
                      [50, 60, 90, 140], [120, 30, 250, 90], [64, 64, 192, 192]], dtype=torch.float32)


def _stock(transformer, images, pos, tokens, index):
    return transformer(images[index], pos, tokens)


@pytest.fixture(scope="module")
def lite():
    return load_sam("litemedsam")


def _decode_with_grads(lite, emb, shared: bool, monkeypatch) -> list[torch.Tensor]:
    monkeypatch.setattr(base, "two_way", two_way if shared else _stock)
    lite.zero_grad()
    leaf = emb.detach().clone().requires_grad_(True)
    low, iou = lite.decode_lowres(leaf, IMAGE_INDEX, BOXES)
    (low.sin().mean() + iou.sum()).backward()
    # the multimask heads take no part in a single-mask decode: zero gradients
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in lite.mask_decoder.parameters()]
    lite.zero_grad()
    return [low.detach(), iou.detach(), leaf.grad, *grads]


def test_litemedsam_decoder_is_shareable(lite):
    assert shareable(lite.mask_decoder.transformer)
    assert not shareable(torch.nn.Linear(2, 2))


def test_shared_first_layer_gives_the_stock_logits_iou_and_gradients(lite, monkeypatch):
    emb = 0.5 * torch.randn(4, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    got = _decode_with_grads(lite, emb, True, monkeypatch)
    ref = _decode_with_grads(lite, emb, False, monkeypatch)
    assert got[0].shape == (7, 1, 256, 256)
    names = ["logits", "iou", "embeddings"] + [n for n, _ in lite.mask_decoder.named_parameters()]
    for name, a, b in zip(names, got, ref):
        # a key projection's bias has no effect on attention (softmax is shift-free): its gradient is rounding
        atol = 1e-5 if name.endswith("k_proj.bias") else 1e-4 * max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-3, msg=f"{name} differs")
    assert float(got[2][2].abs().max()) == 0.0  # the unused slice gets no gradient


def test_shared_first_layer_under_bf16_autocast(lite):
    emb = 0.5 * torch.randn(4, 256, 64, 64, generator=torch.Generator().manual_seed(1))
    images = base.token_major(emb)
    pos = base.token_major(lite.prompt_encoder.get_dense_pe())
    tokens = torch.randn(7, 7, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        hs, src = two_way(lite.mask_decoder.transformer, images, pos, tokens, IMAGE_INDEX)
        hs0, src0 = _stock(lite.mask_decoder.transformer, images, pos, tokens, IMAGE_INDEX)
    assert hs.shape == hs0.shape == (7, 7, 256) and src.shape == src0.shape == (7, 64 * 64, 256)
    torch.testing.assert_close(hs.float(), hs0.float(), atol=0.05, rtol=0.02)
    torch.testing.assert_close(src.float(), src0.float(), atol=0.05, rtol=0.02)


@pytest.mark.parametrize(("index", "runs"), [
    ([0, 0, 0, 1, 1, 1, 2, 2, 2], [(0, 3), (3, 6), (6, 9)]),  # three prompts a slice: a slice a run
    ([0, 1, 2, 3, 4], [(0, 4), (4, 5)]),  # one a slice: full runs
    ([0, 0, 0, 0, 0, 0, 1], [(0, 4), (4, 7)]),  # a slice with more prompts than a run holds
    ([0, 0, 1, 1, 1, 1, 1, 2], [(0, 2), (2, 6), (6, 8)]),
    ([], []),
])
def test_chunks_cut_between_slices_where_they_can(index, runs):
    from napari_samatch.core.sam.refiner import chunks

    assert chunks(torch.tensor(index, dtype=torch.long), 4) == runs
