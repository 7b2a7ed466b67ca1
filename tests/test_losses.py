"""UniMatch losses: CE on logits, Dice with ignore masks, confidence-masked unsupervised loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_samatch.core.device import one_hot
from napari_samatch.core.errors import ConfigError
from napari_samatch.core.match.losses import dice_loss, supervised_loss, unimatch_total, unsupervised_loss


def case(seed: int = 0, b: int = 2, c: int = 4, s: int = 16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, s, s, generator=g)
    target = torch.randint(0, c, (b, s, s), generator=g)
    return logits, target


def perfect_logits(target: torch.Tensor, c: int) -> torch.Tensor:
    return 40.0 * F.one_hot(target.clamp_min(0), c).permute(0, 3, 1, 2).float()


def test_ce_part_is_log_softmax_nll_on_logits():
    logits, target = case()
    target[0, :4] = -1
    ce = 2 * supervised_loss(logits, target) - dice_loss(logits, target)
    valid = target != -1
    logp = logits.log_softmax(1).gather(1, target.clamp_min(0)[:, None])[:, 0]
    manual = -logp[valid].mean()
    assert torch.allclose(ce, manual, atol=1e-5)
    assert torch.allclose(ce, F.cross_entropy(logits, target, ignore_index=-1), atol=1e-5)


def test_dice_zero_for_perfect_logits_and_one_for_wrong():
    _, target = case()
    target[target == 2] = 1  # class 2 absent from target and prediction: counts as perfect
    assert dice_loss(perfect_logits(target, 4), target, 4) < 1e-4
    assert supervised_loss(perfect_logits(target, 4), target) < 1e-4
    wrong = perfect_logits((target + 1) % 4, 4)
    assert dice_loss(wrong, target) > 0.7


def test_dice_ignore_mask_and_minus_one_exclude_pixels():
    logits, target = case(1)
    ignore = torch.zeros_like(target, dtype=torch.bool)
    ignore[:, :8] = True
    base = dice_loss(logits, target, ignore_mask=ignore)
    scrambled = logits.clone()
    scrambled[:, :, :8] = torch.randn_like(scrambled[:, :, :8])  # changes only ignored pixels
    assert torch.allclose(dice_loss(scrambled, target, ignore_mask=ignore), base)
    marked = target.clone()
    marked[ignore] = -1
    assert torch.allclose(dice_loss(logits, marked), base)
    assert torch.allclose(supervised_loss(scrambled, marked), supervised_loss(logits, marked))


def test_all_ignored_is_zero_not_nan():
    logits, target = case(2)
    logits.requires_grad_(True)
    target[:] = -1
    loss = supervised_loss(logits, target) + unsupervised_loss(logits, target, torch.ones(target.shape), kind="ce")
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_unsupervised_loss_ignores_low_confidence():
    _, pseudo = case(3)
    logits = perfect_logits(pseudo, 4)
    wrong = torch.zeros_like(pseudo, dtype=torch.bool)
    wrong[:, 4:10] = True
    logits[:, :, 4:10] = perfect_logits((pseudo + 1) % 4, 4)[:, :, 4:10]  # wrong there
    conf = torch.where(wrong, 0.5, 0.99)
    for kind in ("dice", "ce"):
        assert unsupervised_loss(logits, pseudo, conf, kind=kind) < 1e-4
        assert unsupervised_loss(logits, pseudo, torch.ones_like(conf), kind=kind) > 0.1
    marked = torch.where(wrong, -1, pseudo)  # pseudo == -1 is ignored whatever the confidence
    assert unsupervised_loss(logits, marked, torch.ones_like(conf)) < 1e-4
    with pytest.raises(ConfigError):
        unsupervised_loss(logits, pseudo, conf, kind="mse")


def test_unsupervised_ce_is_normalised_by_valid_pixels():
    logits, pseudo = case(4)
    conf = torch.zeros(pseudo.shape)
    conf[:, :8] = 1.0  # half the pixels confident
    per_pixel = F.cross_entropy(logits, pseudo, reduction="none")
    expected = (per_pixel * (conf >= 0.95)).sum() / pseudo.numel()
    assert torch.allclose(unsupervised_loss(logits, pseudo, conf, kind="ce"), expected, atol=1e-6)


def test_unimatch_total_weights():
    t = unimatch_total(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0), torch.tensor(8.0))
    assert t.item() == pytest.approx((1 + 0.5 + 1 + 4) / 2)


def test_one_hot_is_torchs_without_reading_the_labels_back():
    """``one_hot`` gives ``F.one_hot(...).permute(0, 3, 1, 2)``'s values in its memory layout (so the Dice sums add up
    in the same order), and a label outside the classes gets no class instead of a check that waits for the device."""
    _, target = case(3)
    ours, torchs = one_hot(target, 4), F.one_hot(target, 4).permute(0, 3, 1, 2)
    assert ours.dtype == torch.bool and ours.shape == torchs.shape and ours.stride() == torchs.stride()
    assert torch.equal(ours.long(), torchs)
    assert not one_hot(torch.full((1, 2, 2), 7), 4).any()
