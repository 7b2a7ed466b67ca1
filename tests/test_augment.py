"""Batched tensor augmentation: geometry round trips, label safety, strong views, CutMix, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from napari_samatch.core.errors import ConfigError
from napari_samatch.core.match.augment import (
    apply_cutmix,
    cutmix_masks,
    gaussian_blur,
    invert,
    random_geometry,
    strong_view,
    warp,
)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(b: int, s: int = 64) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    imgs = [0.5 + 0.4 * torch.sin(1.5 * xx + 0.7 * i) * torch.cos(1.2 * yy - 0.3 * i) for i in range(b)]
    return torch.stack(imgs)[:, None]


def labels(b: int, s: int = 64) -> torch.Tensor:
    g = gen(1)
    lab = torch.randint(0, 4, (b, s // 8, s // 8), generator=g)
    return lab.repeat_interleave(8, 1).repeat_interleave(8, 2)


def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of a square image (last two axes)."""
    rots = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return rots + [torch.flip(r, dims=(-1,)) for r in rots]


def test_geometry_mix_and_invert_identity():
    theta = random_geometry(400, gen(0))
    assert theta.shape == (400, 2, 3) and theta.dtype == torch.float32
    full = torch.cat([theta, torch.tensor([0.0, 0, 1]).expand(400, 1, 3)], 1)
    back = torch.cat([invert(theta), torch.tensor([0.0, 0, 1]).expand(400, 1, 3)], 1)
    assert torch.allclose(back @ full, torch.eye(3).expand(400, 3, 3), atol=1e-5)
    lin = theta[:, :, :2]
    is_int = (lin == lin.round()).all(dim=(1, 2))
    is_eye = (lin == torch.eye(2)).all(dim=(1, 2))
    dihed = is_int & ~is_eye  # the reference's rot+flip always flips, so it is never the identity
    assert (torch.linalg.det(lin[dihed]) < 0).all()
    frac_d, frac_r, frac_i = dihed.float().mean(), (~is_int).float().mean(), is_eye.float().mean()
    assert abs(frac_d - 0.5) < 0.08 and abs(frac_r - 0.25) < 0.07 and abs(frac_i - 0.25) < 0.07
    angles = torch.atan2(lin[~is_int][:, 1, 0], lin[~is_int][:, 0, 0]).abs()
    assert angles.max() <= math.radians(20) + 1e-6
    with pytest.raises(ConfigError):
        random_geometry(2, gen(), p_rot90=0.8, p_rotate=0.5)


def test_warp_then_invert_recovers_smooth_images():
    x = smooth_images(8)
    theta = random_geometry(8, gen(3), p_rot90=0.0, p_rotate=1.0)  # all arbitrary rotations
    back = warp(warp(x, theta, padding="border"), invert(theta), padding="border")
    s = x.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(s) - (s - 1) / 2, torch.arange(s) - (s - 1) / 2, indexing="ij")
    inner = (yy**2 + xx**2).sqrt() < 0.45 * s  # stays inside the image under any rotation
    err = (back - x).abs()[..., inner]
    assert err.max() < 0.02, err.max()


def test_rot90_and_flip_are_exact():
    x, lab = smooth_images(16), labels(16)
    theta = random_geometry(16, gen(5), p_rot90=1.0, p_rotate=0.0)
    wi, wl = warp(x, theta), warp(lab, theta, mode="nearest", fill=-1)
    assert wl.dtype == lab.dtype
    for i in range(16):
        assert any(torch.equal(wl[i], d) for d in dihedral(lab[i]))
        assert any(torch.allclose(wi[i], d, atol=1e-6) for d in dihedral(x[i]))
    assert torch.equal(warp(wl, invert(theta), mode="nearest"), lab)


def test_nearest_labels_keep_valid_values():
    lab = labels(6)
    theta = random_geometry(6, gen(2), p_rot90=0.0, p_rotate=1.0)
    for fill, allowed in ((-1, {-1, 0, 1, 2, 3}), (0, {0, 1, 2, 3})):
        out = warp(lab, theta, mode="nearest", fill=fill)
        assert set(out.unique().tolist()) <= allowed
    assert (warp(lab, theta, mode="nearest", fill=-1) == -1).any()  # rotated corners are marked
    with pytest.raises(ConfigError):
        warp(lab, theta, mode="bilinear")


def test_non_square_rotation_is_not_sheared():
    lab = torch.zeros(1, 32, 64, dtype=torch.long)
    lab[0, 12:20, 28:36] = 1  # an 8x8 square in the centre
    theta = torch.tensor([[[0.0, -1, 0], [1, 0, 0]]])
    out = warp(lab, theta, mode="nearest")
    rows, cols = out[0].nonzero().unbind(1)
    assert out.sum() == 64 and rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7


def test_batched_warp_equals_per_sample():
    x = smooth_images(12)
    theta = random_geometry(12, gen(7))
    whole = warp(x, theta)
    single = torch.cat([warp(x[i : i + 1], theta[i : i + 1]) for i in range(12)])
    assert torch.allclose(whole, single, atol=1e-6)


def test_strong_view_range_shape_and_independence():
    x = smooth_images(1, 32).expand(64, 1, 32, 32).contiguous()
    out = strong_view(x, gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    changed = (out - x).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert 45 <= changed.sum() < 64  # p(jitter or blur) = 0.9: most samples change, not all
    assert len({round(v, 5) for v in out.mean(dim=(1, 2, 3)).tolist()}) > 40  # per-sample parameters


def test_gaussian_blur_identity_and_constants():
    x = smooth_images(3)
    out = gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0]), radius=6)
    assert torch.equal(out[0], x[0])
    assert not torch.allclose(out[2], x[2], atol=1e-3)
    const = torch.full((2, 1, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(const, torch.tensor([0.5, 2.0])), const, atol=1e-6)


def test_cutmix_masks_area_and_shape():
    m = cutmix_masks(200, 256, 256, gen(0), p=1.0)
    assert m.shape == (200, 256, 256) and m.dtype == torch.bool
    frac = m.float().mean(dim=(1, 2))
    assert frac.min() >= 0.02 * 0.95 and frac.max() <= 0.4 * 1.05
    for i in range(0, 200, 25):  # each mask is one filled rectangle
        rows, cols = m[i].nonzero().unbind(1)
        assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == m[i].sum()
    assert not cutmix_masks(8, 64, 64, gen(0), p=0.0).any()
    half = cutmix_masks(400, 32, 32, gen(1)).flatten(1).any(1).float().mean()
    assert abs(half - 0.5) < 0.08


def test_apply_cutmix_images_and_maps():
    x, y = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 2:4, 2:5] = True
    out = apply_cutmix(x, y, mask)
    assert out.sum() == 6 and out[0, 0, 2:4, 2:5].eq(1).all()
    lab = apply_cutmix(torch.zeros(2, 8, 8, dtype=torch.long), torch.full((2, 8, 8), 3), mask)
    assert lab.dtype == torch.long and lab.sum() == 18


def test_fixed_seed_is_deterministic():
    x = smooth_images(4)
    runs = []
    for seed in (11, 11, 12):
        g = gen(seed)
        runs.append((random_geometry(4, g), strong_view(x, g), cutmix_masks(4, 64, 64, g, p=1.0)))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))
