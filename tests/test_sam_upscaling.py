"""SAM's mask upscaling computed fast (core/sam/upscaling.py): the same numbers as the decoder's modules."""

from __future__ import annotations

import pytest
import torch

from napari_samatch.core.sam import load_sam
from napari_samatch.core.sam.upscaling import PatchUpsample, fusable, upscale_masks

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lite():
    return load_sam("litemedsam")


@pytest.mark.parametrize("shape", [(3, 256, 64, 16, 16), (2, 64, 32, 8, 12)])
def test_patch_upsample_equals_conv_transpose_with_gradients(shape):
    b, c, o, h, w = shape
    torch.manual_seed(0)
    stock = torch.nn.ConvTranspose2d(c, o, kernel_size=2, stride=2)
    fast = torch.nn.ConvTranspose2d(c, o, kernel_size=2, stride=2)
    fast.load_state_dict(stock.state_dict())
    assert PatchUpsample.fits(fast) and not PatchUpsample.fits(torch.nn.ConvTranspose2d(c, o, 3, stride=2))
    fast.__class__ = PatchUpsample
    x = torch.randn(b, c, h, w, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    ref, got = stock(x), fast(x2)
    assert got.shape == ref.shape == (b, o, 2 * h, 2 * w)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    ref.square().sum().backward()
    got.square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.weight.grad, stock.weight.grad, atol=1e-3, rtol=1e-4)


def test_backends_use_the_patch_upsample(lite):
    ups = [m for m in lite.mask_decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert ups and all(type(m) is PatchUpsample for m in ups)


def test_fused_upscaling_equals_the_decoders_modules_with_gradients(lite):
    """``upscale_masks`` computes LiteMedSAM's upscaling and mask product in the tokens' own layout
    (3x faster on a CPU with gradients): the logits and every gradient must be the modules' own."""
    ups = lite.mask_decoder.output_upscaling
    assert fusable(ups)
    torch.manual_seed(0)
    p, h, w, c = 3, 8, 12, 256
    tokens = torch.randn(p, h * w, c, requires_grad=True)
    hyper = torch.randn(p, c // 8, requires_grad=True)
    results = []
    for fused in (True, False):
        lite.zero_grad()
        tokens.grad = hyper.grad = None
        if fused:
            masks = upscale_masks(ups, tokens, hyper, h, w)
        else:
            up = ups(tokens.transpose(1, 2).reshape(p, c, h, w))
            masks = torch.bmm(hyper.unsqueeze(1), up.flatten(2)).view(p, 1, 4 * h, 4 * w)
        (masks.sin().sum()).backward()
        results.append([masks.detach(), tokens.grad, hyper.grad, *(q.grad.clone() for q in ups.parameters())])
    assert results[0][0].shape == (p, 1, 4 * h, 4 * w)
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)
    lite.zero_grad()
