"""Our Dice, HD95 and ASD against medpy (``medpy.metric.binary``, the code the paper's evaluation used).

Random masks (2D and 3D, several classes, blobs touching the array's edge), one-pixel masks and anisotropic
spacing agree to 1e-6. Where the conventions differ, the tests below say so and check ours:

* one mask empty: medpy's hd95/asd raise ``RuntimeError``; ours give NaN (and ``missed=True``), so a benchmark
  can average the defined cases and count the missed ones. Dice is 0.0 in both.
* both empty: medpy's hd95/asd raise; ours give 0.0 (and ``empty=True``, left out by
  ``summarise(exclude_empty=True)``). Dice: ours 1.0 (with ``empty=True``); medpy 0.5.2's ``dc`` returns NaN
  (its 0/0 is a numpy division, so the ``ZeroDivisionError`` branch meant to return 1.0 never runs).
* ASSD (``asd(..., symmetric=True)``): the mean of the pooled distances of both surfaces, as medpy 0.5's
  ``assd`` and MONAI's ``compute_average_surface_distance(symmetric=True)``; medpy 0.4 averaged the two one-way
  means instead, which differs when the surfaces have different numbers of voxels. ``asd`` (one-way, what the
  tables report) is medpy's ``asd``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from medpy.metric import binary
from scipy import ndimage

from napari_samatch.core.evaluation.metrics import asd, dice, dice_per_class, foreground_dice, hd95, per_class_metrics

TOL = 1e-6
_surface_distances = getattr(binary, "__surface_distances")  # medpy's one-way distances (module-private)


def blobs(rng: np.random.Generator, shape: tuple[int, ...], classes: int) -> np.ndarray:
    """Smooth random regions (several components, some on the array's edge), labels 0..classes-1."""
    field = ndimage.gaussian_filter(rng.standard_normal((classes, *shape)), sigma=[0, *[s / 8 for s in shape]])
    labels = field.argmax(0)
    labels[field.max(0) < np.quantile(field.max(0), 0.3)] = 0  # some background
    return labels


def spacings(ndim: int) -> list[tuple[float, ...] | None]:
    return [None, (1.0,) * ndim, (2.5, 1.0) if ndim == 2 else (10.0, 1.0, 1.0),
            (0.7, 1.9) if ndim == 2 else (5.0, 0.7, 0.7)]


def assert_like_medpy(pred: np.ndarray, gt: np.ndarray, cls: int, spacing) -> None:
    a, b = pred == cls, gt == cls
    assert dice(pred, gt, cls) == pytest.approx(binary.dc(a, b), abs=TOL)
    assert hd95(pred, gt, cls, spacing) == pytest.approx(binary.hd95(a, b, voxelspacing=spacing), abs=TOL)
    assert asd(pred, gt, cls, spacing) == pytest.approx(binary.asd(a, b, voxelspacing=spacing), abs=TOL)
    assert asd(pred, gt, cls, spacing, symmetric=True) == pytest.approx(binary.assd(a, b, voxelspacing=spacing),
                                                                        abs=TOL)


@pytest.mark.parametrize("shape", [(48, 40), (64, 64), (12, 40, 36), (6, 24, 20)], ids=str)
@pytest.mark.parametrize("seed", range(3))
def test_random_masks_match_medpy(shape, seed):
    rng = np.random.default_rng(seed)
    gt = blobs(rng, shape, 4)
    pred = blobs(rng, shape, 4) if seed == 2 else np.where(rng.random(shape) < 0.05, rng.integers(0, 4, shape), gt)
    pred = ndimage.shift(pred, [1] * len(shape), order=0, mode="nearest") if seed == 1 else pred
    for spacing in spacings(len(shape)):
        for cls in range(1, 4):
            if (pred == cls).any() and (gt == cls).any():
                assert_like_medpy(pred, gt, cls, spacing)
        m = per_class_metrics(pred, gt, 4, spacing)
        for cls, row in m.items():
            if (pred == cls).any() and (gt == cls).any():
                a, b = pred == cls, gt == cls
                assert row["dice"] == pytest.approx(binary.dc(a, b), abs=TOL)
                assert row["hd95"] == pytest.approx(binary.hd95(a, b, voxelspacing=spacing), abs=TOL)
                assert row["asd"] == pytest.approx(binary.asd(a, b, voxelspacing=spacing), abs=TOL)


@pytest.mark.parametrize("ndim", [2, 3])
def test_one_pixel_masks_match_medpy(ndim):
    shape = (9, 11) if ndim == 2 else (5, 9, 11)
    pred, gt = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    pred[(2,) * ndim] = 1
    gt[(4,) * (ndim - 1) + (7,)] = 1
    for spacing in spacings(ndim):
        assert_like_medpy(pred, gt, 1, spacing)  # one pixel each, apart
        assert_like_medpy(pred, pred, 1, spacing)  # the same pixel: all zero
    big = np.zeros(shape, np.uint8)
    big[(slice(1, -1),) * ndim] = 1  # a pixel inside a block, and the block on the array's edge
    for spacing in spacings(ndim):
        assert_like_medpy(pred, big, 1, spacing)
        assert_like_medpy(np.ones(shape, np.uint8), big, 1, spacing)


def test_masks_on_the_array_edge_count_the_edge_as_surface_like_medpy():
    full = np.ones((8, 8), np.uint8)
    half = np.zeros((8, 8), np.uint8)
    half[:, :4] = 1
    assert_like_medpy(half, full, 1, (1.0, 3.0))
    assert hd95(full, full, 1) == 0.0


def test_empty_masks_follow_our_documented_conventions():
    empty, one = np.zeros((6, 6), np.uint8), np.zeros((6, 6), np.uint8)
    one[2, 3] = 1
    # Dice: one empty is 0.0 in both; both empty is 1.0 here, NaN from medpy's dc (see the module docstring)
    assert dice(one, empty, 1) == binary.dc(one, empty) == 0.0
    with np.errstate(invalid="ignore"):
        assert dice(empty, empty, 1) == 1.0 and math.isnan(binary.dc(empty, empty))
    # distances: medpy raises, we give 0.0 (both empty) and NaN (one empty) with flags
    for a, b in ((empty, one), (one, empty), (empty, empty)):
        with pytest.raises(RuntimeError):
            binary.hd95(a, b)
    assert (hd95(empty, empty, 1), asd(empty, empty, 1)) == (0.0, 0.0)
    assert math.isnan(hd95(one, empty, 1)) and math.isnan(asd(empty, one, 1))
    assert per_class_metrics(empty, empty, 2)[1]["empty"] and per_class_metrics(one, empty, 2)[1]["missed"]


def test_assd_pools_both_surfaces_not_the_mean_of_two_means():
    pred, gt = np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8)
    pred[5, 5] = 1                 # a surface of one voxel
    gt[8:16, 8:16] = 1             # a surface of 28 voxels
    a, b = pred == 1, gt == 1
    pooled = np.concatenate([_surface_distances(a, b), _surface_distances(b, a)]).mean()
    ours = asd(pred, gt, 1, symmetric=True)
    assert ours == pytest.approx(pooled, abs=TOL) and ours == pytest.approx(binary.assd(a, b), abs=TOL)
    assert abs(ours - (binary.asd(a, b) + binary.asd(b, a)) / 2) > 1.0  # medpy 0.4's convention differs here


@pytest.mark.parametrize("seed", range(3))
def test_the_batch_dice_used_in_training_matches_medpy(seed):
    rng = np.random.default_rng(seed)
    gt = blobs(rng, (4, 32, 32), 4)
    pred = np.where(rng.random(gt.shape) < 0.1, rng.integers(0, 4, gt.shape), gt)
    pred[pred == 3] = 0  # class 3 predicted nowhere
    expected = [binary.dc(pred == c, gt == c) for c in range(4)]
    assert dice_per_class(pred, gt, 4) == pytest.approx(expected, abs=TOL)
    assert dice_per_class(torch.from_numpy(pred), torch.from_numpy(gt), 4).tolist() == pytest.approx(expected, abs=TOL)
    assert foreground_dice(pred, gt, 4) == pytest.approx(expected[1:], abs=TOL)
    both_empty = foreground_dice(np.zeros((4, 4), int), np.zeros((4, 4), int), 3)
    assert np.isnan(both_empty).all()  # NaN, not medpy's 1.0: a nanmean over classes leaves them out
