"""Dice, HD95, ASD and their summaries, plus the torch Dice used during training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_samatch.core.errors import DataError
from napari_samatch.core.evaluation.metrics import asd, dice, dice_per_class, hd95, per_class_metrics, summarise


def squares(shift: int = 0, size=(40, 40)) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros(size, dtype=np.uint8)
    gt[10:20, 10:20] = 1
    pred = np.zeros(size, dtype=np.uint8)
    pred[10:20, 10 + shift:20 + shift] = 1
    return pred, gt


def test_known_dice():
    pred, gt = squares(5)
    assert dice(pred, gt, 1) == pytest.approx(2 * 50 / 200)
    assert dice(gt, gt, 1) == 1.0
    assert dice(pred, gt, 2) == 1.0  # absent from both


def test_hd95_of_shifted_squares_equals_the_shift():
    for s in (1, 3, 6):
        pred, gt = squares(s)
        assert hd95(pred, gt, 1) == pytest.approx(s)
    pred, gt = squares(0)
    assert hd95(pred, gt, 1) == 0.0 and asd(pred, gt, 1) == 0.0


def test_spacing_scales_distances():
    pred, gt = squares(4)
    assert hd95(pred, gt, 1, spacing=(1.0, 2.5)) == pytest.approx(10.0)  # shift along columns
    assert hd95(pred, gt, 1, spacing=(7.0, 2.5)) == pytest.approx(10.0)
    assert asd(pred, gt, 1, spacing=(2.0, 2.0)) == pytest.approx(2 * asd(pred, gt, 1))
    with pytest.raises(DataError):
        hd95(pred, gt, 1, spacing=(1.0,))
    with pytest.raises(DataError):
        hd95(pred, gt, 1, spacing=(1.0, 0.0))


def test_asd_directions():
    gt = np.zeros((30, 30), dtype=np.uint8)
    gt[5:25, 5:25] = 1
    pred = np.zeros_like(gt)
    pred[5:25, 5:25] = 1
    pred[0, 0] = 1  # a stray pixel far from the ground truth
    one_way = asd(pred, gt, 1)
    both = asd(pred, gt, 1, symmetric=True)
    assert one_way > 0 and both < one_way  # the gt surface adds many zero distances
    assert asd(gt, pred, 1) == 0.0


def test_3d_volume_with_anisotropic_spacing():
    gt = np.zeros((6, 20, 20), dtype=np.uint8)
    gt[1:5, 5:15, 5:15] = 2
    pred = np.zeros_like(gt)
    pred[2:6, 5:15, 5:15] = 2  # shifted one slice
    assert hd95(pred, gt, 2, spacing=(10.0, 1.0, 1.0)) == pytest.approx(10.0)
    m = per_class_metrics(pred, gt, 3, spacing=(10.0, 1.0, 1.0))
    assert m[2]["dice"] == pytest.approx(0.75) and m[2]["hd95"] == pytest.approx(10.0)


def test_empty_conventions():
    empty = np.zeros((20, 20), dtype=np.uint8)
    pred, gt = squares(0, size=(20, 20))
    assert (dice(empty, empty, 1), hd95(empty, empty, 1), asd(empty, empty, 1)) == (1.0, 0.0, 0.0)
    assert dice(empty, gt, 1) == 0.0 and math.isnan(hd95(empty, gt, 1)) and math.isnan(asd(empty, gt, 1))
    assert dice(pred, empty, 1) == 0.0 and math.isnan(hd95(pred, empty, 1))
    m = per_class_metrics(pred, gt, 3)
    assert m[1] == {"dice": 1.0, "hd95": 0.0, "asd": 0.0, "empty": False, "missed": False}
    assert m[2]["empty"] and not m[2]["missed"] and m[2]["dice"] == 1.0
    m = per_class_metrics(empty, gt, 2)
    assert m[1]["missed"] and math.isnan(m[1]["hd95"])


def test_summarise_means_missed_and_empty():
    pred, gt = squares(2, size=(40, 40))
    empty = np.zeros_like(gt)
    r1 = per_class_metrics(pred, gt, 3)    # class 1 overlaps, class 2 empty in both
    r2 = per_class_metrics(empty, gt, 3)   # class 1 missed
    s = summarise([r1, r2])
    c1 = s["per_class"][1]
    assert c1["dice"] == pytest.approx(r1[1]["dice"] / 2)
    assert c1["hd95"] == pytest.approx(r1[1]["hd95"])  # the NaN of the missed case is left out
    assert c1["missed"] == 1 and c1["n"] == 2
    assert s["per_class"][2]["empty"] == 2 and s["per_class"][2]["dice"] == 1.0
    assert s["mean"]["dice"] == pytest.approx((c1["dice"] + 1.0) / 2)
    s2 = summarise([r1, r2], exclude_empty=True)
    assert s2["per_class"][2]["n"] == 0 and math.isnan(s2["per_class"][2]["dice"])
    assert s2["mean"]["dice"] == pytest.approx(c1["dice"])


def test_shape_mismatch_raises():
    with pytest.raises(DataError):
        dice(np.zeros((4, 4)), np.zeros((4, 5)), 1)
    with pytest.raises(DataError):
        per_class_metrics(np.zeros((4, 4)), np.zeros((4, 5)), 2)


def test_torch_dice_per_class_matches_numpy_and_ignores():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (3, 16, 16), generator=g)
    target = torch.randint(0, 4, (3, 16, 16), generator=g)
    d = dice_per_class(pred, target, 4)
    for c in range(4):
        assert d[c].item() == pytest.approx(dice(pred.numpy(), target.numpy(), c), abs=1e-6)
    scores = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    assert torch.allclose(dice_per_class(scores, target, 4), d)
    target2 = target.clone()
    target2[:, :8] = -1
    d2 = dice_per_class(pred, target2, 4)
    keep = (slice(None), slice(8, None))
    for c in range(4):
        assert d2[c].item() == pytest.approx(dice(pred[keep].numpy(), target[keep].numpy(), c), abs=1e-6)
    assert dice_per_class(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), 3).tolist() \
        == [1.0, 1.0, 1.0]
