"""The Match model: size, shapes, feature perturbation, and that it can learn."""

from __future__ import annotations

import pytest
import torch

from napari_samatch.core.errors import DataError
from napari_samatch.core.match.inference import class_map, class_map_and_confidence
from napari_samatch.core.match.losses import supervised_loss
from napari_samatch.core.match.unet import MaskDropout, UNet, count_parameters


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_parameter_count_matches_paper():
    n = count_parameters(UNet())
    assert 1.6e6 <= n <= 2.0e6, n
    assert count_parameters(UNet(in_channels=3, num_classes=2)) != n


def test_shapes_with_and_without_fp():
    torch.manual_seed(0)
    net = UNet(num_classes=4).train()
    x = torch.rand(3, 1, 32, 48)
    assert net(x).shape == (3, 4, 32, 48)
    out, out_fp = net(x, need_fp=True)
    assert out.shape == out_fp.shape == (3, 4, 32, 48)
    out, out_fp = net(x, need_fp=True, fp_start=2)  # perturb only the last sample
    assert out.shape == (3, 4, 32, 48) and out_fp.shape == (1, 4, 32, 48)


def test_fp_branch_differs_from_clean_branch():
    torch.manual_seed(0)
    net = UNet().train()
    x = torch.rand(2, 1, 32, 32)
    out, out_fp = net(x, need_fp=True)
    assert not torch.allclose(out, out_fp, atol=1e-4)
    # in eval mode the clean branch is deterministic and equals the plain forward
    net.eval()
    with torch.no_grad():
        clean, fp = net(x, need_fp=True)
        assert torch.allclose(clean, net(x), atol=1e-5)
        assert not torch.allclose(clean, fp, atol=1e-4)


def test_bad_sizes_raise_user_errors():
    net = UNet()
    with pytest.raises(DataError, match="multiple of 16"):
        net(torch.rand(1, 1, 40, 32))
    with pytest.raises(DataError):
        net(torch.rand(1, 32, 32))


def _heart(shift: float, r_lv: float, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy short-axis slice: background 0, RV 1 (ellipse), myocardium 2 (ring), LV 3 (disk)."""
    ax = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    k = size / 64  # shapes are drawn for 64 px and scaled
    cy, cx = size / 2 + shift * k, size / 2 + 4 * k
    r = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
    lab = torch.zeros(size, size, dtype=torch.long)
    lab[((yy - cy) / (10 * k)) ** 2 + ((xx - cx + 18 * k) / (7 * k)) ** 2 < 1] = 1
    lab[r < (r_lv + 5) * k] = 2
    lab[r < r_lv * k] = 3
    intensity = torch.tensor([0.15, 0.65, 0.3, 0.85])
    g = torch.Generator().manual_seed(int(shift) + 100)
    img = intensity[lab] + 0.03 * torch.randn(size, size, generator=g)
    return img.clamp(0, 1)[None], lab


def test_overfits_two_images():
    torch.manual_seed(0)
    (a, la), (b, lb) = _heart(0, 9.0), _heart(-5, 12.0)
    x, y = torch.stack([a, b]), torch.stack([la, lb])
    net = UNet().train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad(set_to_none=True)
        supervised_loss(net(x), y).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1)
    dice = []
    for c in range(1, 4):
        inter = ((pred == c) & (y == c)).sum().item()
        dice.append(2 * inter / ((pred == c).sum().item() + (y == c).sum().item()))
    assert min(dice) > 0.9, dice


@pytest.mark.parametrize("classes", [1, 2, 4, 7])
def test_class_map_is_argmax_over_classes_ties_included(classes):
    g = torch.Generator().manual_seed(classes)
    scores = torch.randint(0, 3, (3, classes, 17, 9), generator=g).float()  # three values: ties everywhere
    assert torch.equal(class_map(scores), scores.argmax(1))
    probs = torch.softmax(torch.randn(2, classes, 8, 8, generator=g), 1)
    assert torch.equal(class_map(probs), probs.argmax(1))
    for p in (scores, probs):  # with the confidence: class_map's labels, ties included, and the top value
        labels, confidence = class_map_and_confidence(p)
        assert torch.equal(labels, class_map(p)) and torch.equal(confidence, p.amax(1))


def test_channels_last_weights_give_the_same_model():
    """The engine keeps the Match model channels-last on a CPU (core.device.conv_memory_format): a layout
    change only, so the logits and the gradients must be the NCHW model's."""
    torch.manual_seed(0)
    net = UNet(num_classes=4, dropout=(0.0,) * 5).train()  # element-wise dropout draws in memory order
    last = UNet(num_classes=4, dropout=(0.0,) * 5).train()
    last.load_state_dict(net.state_dict())
    last.to(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 64, 64)
    y = torch.randint(0, 4, (2, 64, 64))
    outs = []
    for model in (net, last):
        torch.manual_seed(1)  # the same feature-perturbation masks (one draw per channel)
        logits, logits_fp = model(x, need_fp=True)
        supervised_loss(logits, y).backward()
        outs.append((logits, logits_fp, model.enc[0][0].weight.grad))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def _saved_bytes_and_grads(net: UNet, x: torch.Tensor, y: torch.Tensor):
    """Logits, every gradient and the bytes autograd keeps for the backward, as the engine trains: the
    weights channels-last, bf16 autocast, feature perturbation on."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()  # shared storage counted once
        return t

    torch.manual_seed(1)  # the same dropout masks for every model
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
        logits, logits_fp = net(x, need_fp=True)
    supervised_loss(logits.float(), y).backward(retain_graph=True)
    logits_fp.float().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    return logits, logits_fp, grads, sum(saved.values())


def test_in_place_activations_change_nothing_but_memory():
    """The LeakyReLUs overwrite BatchNorm's output in place (BatchNorm's backward needs its input only): the
    logits and every gradient are the out-of-place model's to the bit, and the graph keeps less."""
    torch.manual_seed(0)
    net = UNet(num_classes=4).train().to(memory_format=torch.channels_last)
    stock = UNet(num_classes=4).train().to(memory_format=torch.channels_last)
    stock.load_state_dict(net.state_dict())
    for m in stock.modules():
        if isinstance(m, torch.nn.LeakyReLU):
            assert m.inplace
            m.inplace = False
    x = torch.rand(3, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (3, 64, 64))
    *ours, our_bytes = _saved_bytes_and_grads(net, x, y)
    *theirs, their_bytes = _saved_bytes_and_grads(stock, x, y)
    for a, b in zip(ours[:2] + ours[2], theirs[:2] + theirs[2]):
        assert torch.equal(a, b)
    assert our_bytes < 0.9 * their_bytes, (our_bytes, their_bytes)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_mask_dropout_is_dropout(p, layout):
    """MaskDropout keeps each element with probability 1 - p, gives the kept ones the values ``nn.Dropout``
    gives them (scaled by 1 / (1 - p), rounded alike), keeps the input's dtype and memory layout, passes
    gradients through the same mask, repeats under the same seed, and is the identity in evaluation."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = (torch.rand(4, 32, 48, 48) + 0.5).bfloat16().contiguous(memory_format=fmt).requires_grad_()
    drop = MaskDropout(p).train()
    torch.manual_seed(3)
    y = drop(x)
    kept = y != 0
    n = kept.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5  # five standard errors
    stock = torch.nn.functional.dropout(x, p, training=True)  # its own mask; the same values where both keep
    both = kept & (stock != 0)
    assert torch.equal(y[both], stock[both])
    assert y.dtype == x.dtype and y.is_contiguous(memory_format=fmt)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, kept)
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)
    # neighbouring channels and pixels are not tied together (each element has its own 16 bits): two
    # neighbours agree as often as independent draws do, and every channel keeps at the same rate
    for a, b in ((kept[:, 1:], kept[:, :-1]), (kept[..., 1:], kept[..., :-1])):
        assert abs((a == b).float().mean().item() - (p * p + (1 - p) ** 2)) < 0.01
    by_channel = kept.float().mean((0, 2, 3))
    assert by_channel.std() < 0.05
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(MaskDropout(0.0).train()(x), x)
