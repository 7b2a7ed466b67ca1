"""Batched augmentation on tensors: UniMatch's weak geometry, strong photometric views and CutMix.

Everything runs on the tensors' device, is vectorised over the batch, and draws all randomness from a
caller-supplied ``torch.Generator`` (so a seed reproduces a run). Small per-sample parameters are drawn
on the generator's device and moved to the data's device.

Geometry is expressed as affine matrices ``theta`` (B, 2, 3) in the ``affine_grid`` convention (they
map output coordinates to input coordinates). The engine can therefore compute a pseudo-label in a
slice's own frame (where its cached SAM embedding is valid) and warp it with the same ``theta`` as the
image; :func:`invert` maps a prediction from the augmented frame back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..device import to_device
from ..errors import ConfigError, DataError

__all__ = [
    "random_geometry",
    "warp",
    "invert",
    "strong_view",
    "gaussian_blur",
    "cutmix_masks",
    "apply_cutmix",
]

_PADDINGS = ("zeros", "border", "reflection")


def _rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | None) -> Tensor:
    """Uniform [0, 1) draws from ``generator`` (on its own device), moved to ``device``."""
    u = torch.rand(shape, generator=generator, device=generator.device)
    return u if device is None else to_device(u, device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator, device) -> Tensor:
    u = torch.randint(0, high, shape, generator=generator, device=generator.device)
    return u if device is None else to_device(u, device)


# ----------------------------------------------------------------------------------------- geometry
# Exact integer matrices (x, y order) so that 90-degree turns and flips land on pixel centres exactly.
_ROT90 = torch.tensor([[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]]])
_FLIP = torch.tensor([[[-1, 0], [0, 1]], [[1, 0], [0, -1]]])


def random_geometry(
    batch: int,
    generator: torch.Generator,
    p_rot90: float = 0.5,
    p_rotate: float = 0.25,
    max_deg: float = 20.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per-sample weak-view geometry ``theta`` (B, 2, 3), UniMatch's ACDC weak view.

    With probability ``p_rot90`` a random multiple of 90 degrees followed by a flip about a random axis
    (as the reference's ``random_rot_flip``: note this always flips, so it yields the 4 reflections of
    the square's symmetry group); else, with overall probability ``p_rotate`` (the reference's nested
    0.5 x 0.5 = 0.25), a rotation by a uniform angle in [-max_deg, max_deg]; else the identity.
    Resizing to the training size happens beforehand; matrices are in an isotropic frame (see
    :func:`warp` for non-square images). Translation is always zero.
    """
    if batch < 0 or not (0.0 <= p_rot90 and 0.0 <= p_rotate and p_rot90 + p_rotate <= 1.0):
        raise ConfigError(
            f"Geometry probabilities must be >= 0 and sum to at most 1 (got p_rot90={p_rot90}, "
            f"p_rotate={p_rotate}); lower one of them."
        )
    u = _rand((batch,), generator, device)
    k = _randint(4, (batch,), generator, device)
    axis = _randint(2, (batch,), generator, device)
    angle = (_rand((batch,), generator, device) * 2.0 - 1.0) * math.radians(max_deg)

    # (integer matmul is unsupported on CUDA, hence the cast first)
    dihedral = _FLIP.to(u.device, dtype)[axis] @ _ROT90.to(u.device, dtype)[k]  # forward map on the image
    dihedral = dihedral.transpose(1, 2)  # orthogonal: its inverse, i.e. output -> input sampling
    c, s = torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)
    rotation = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    eye = torch.eye(2, dtype=dtype, device=u.device).expand(batch, 2, 2)

    use_rot90 = (u < p_rot90)[:, None, None]
    use_rotate = ((u >= p_rot90) & (u < p_rot90 + p_rotate))[:, None, None]
    lin = torch.where(use_rot90, dihedral, torch.where(use_rotate, rotation, eye))
    return torch.cat([lin, torch.zeros(batch, 2, 1, dtype=dtype, device=u.device)], dim=2)


def invert(theta: Tensor) -> Tensor:
    """The inverse affine maps: ``warp(warp(x, theta), invert(theta))`` ~ ``x`` inside the image."""
    full = torch.cat([theta, theta.new_tensor([0.0, 0.0, 1.0]).expand(theta.shape[0], 1, 3)], dim=1)
    return torch.linalg.inv(full)[:, :2]


def _anisotropic(theta: Tensor, h: int, w: int) -> Tensor:
    """Re-express an isotropic-frame ``theta`` in ``affine_grid``'s normalised frame for an HxW image.

    ``affine_grid`` scales x by W/2 and y by H/2, so a rotation written for a square would shear a
    non-square image; conjugating with S = diag(W, H) keeps it a true rotation in pixel units.
    """
    if h == w:
        return theta
    s = theta.new_tensor([w, h])
    lin = theta[:, :, :2] * s[None, None, :] / s[None, :, None]  # S^-1 A S
    return torch.cat([lin, theta[:, :, 2:] / s[None, :, None] * max(h, w)], dim=2)


def warp(
    x: Tensor,
    theta: Tensor,
    mode: str = "bilinear",
    padding: str = "zeros",
    fill: float = 0.0,
) -> Tensor:
    """Resample ``x`` with per-sample affine maps ``theta`` (B, 2, 3) on ``x``'s device.

    ``x`` is (B, C, H, W) or (B, H, W), float or integer. Integer tensors (label maps) need
    ``mode='nearest'`` and keep their dtype. With ``padding='zeros'`` pixels coming from outside the
    image get ``fill`` (e.g. -1 to mark them ignored in a label map, 0 for background); ``'border'``
    and ``'reflection'`` extend the image instead and ignore ``fill``. ``align_corners=False``.
    """
    if mode not in ("bilinear", "nearest"):
        raise ConfigError(f"Unknown warp mode {mode!r}; use 'bilinear' or 'nearest'.")
    if padding not in _PADDINGS:
        raise ConfigError(f"Unknown padding {padding!r}; use one of {_PADDINGS}.")
    if x.dim() not in (3, 4) or theta.shape != (x.shape[0], 2, 3):
        raise DataError(
            f"warp needs x shaped (B, C, H, W) or (B, H, W) and theta (B, 2, 3); got {tuple(x.shape)} "
            f"and {tuple(theta.shape)}."
        )
    is_int = not (x.is_floating_point() or x.is_complex())
    if is_int and mode != "nearest":
        raise ConfigError("Label maps (integer tensors) must be warped with mode='nearest'.")
    squeeze = x.dim() == 3
    xf = x.unsqueeze(1) if squeeze else x
    dtype = xf.dtype if xf.is_floating_point() else torch.float32
    # Integer labels up to 2**24 survive a float32 round trip exactly.
    xf = xf.to(dtype)
    h, w = xf.shape[-2:]
    grid = F.affine_grid(_anisotropic(theta.to(dtype=dtype, device=x.device), h, w), list(xf.shape), align_corners=False)

    if padding == "zeros" and fill != 0.0:
        if mode == "nearest":
            # Shift values so every in-image sample is >= 1: a 0 after sampling means "outside".
            lo = xf.amin() if xf.numel() else xf.new_tensor(0.0)
            shifted = F.grid_sample(xf - lo + 1.0, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            out = torch.where(shifted == 0, shifted.new_tensor(fill), shifted + lo - 1.0)
        else:
            out = F.grid_sample(xf - fill, grid, mode=mode, padding_mode="zeros", align_corners=False) + fill
    else:
        out = F.grid_sample(xf, grid, mode=mode, padding_mode=padding, align_corners=False)
    if is_int:
        out = out.round().to(x.dtype)
    return out.squeeze(1) if squeeze else out


# ----------------------------------------------------------------------------------------- strong view
def _blend_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision-style contrast: blend with the per-image grey mean, then clamp."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0.0, 1.0)


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int | None = None) -> Tensor:
    """Per-sample separable Gaussian blur of (B, C, H, W) with ``sigma`` (B,), reflect padding.

    One grouped convolution per axis for the whole batch; ``sigma <= 0`` leaves a sample unchanged
    (a delta kernel). ``radius`` defaults to ceil(3 * max sigma).
    """
    b, c, h, w = x.shape
    sigma = sigma.to(device=x.device, dtype=x.dtype)
    if radius is None:
        radius = max(1, int(math.ceil(3.0 * float(sigma.max())))) if b else 1
    radius = min(radius, h - 1, w - 1)  # reflect padding needs radius < size
    offs = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe = sigma.clamp_min(1e-6)[:, None]
    kern = torch.exp(-0.5 * (offs[None] / safe) ** 2)
    delta = (offs == 0).to(x.dtype).expand_as(kern)
    kern = torch.where((sigma > 0)[:, None], kern / kern.sum(1, keepdim=True), delta)
    kern = kern.repeat_interleave(c, dim=0)  # (B*C, K): one kernel per (sample, channel) group
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kern[:, None, :, None], groups=b * c)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kern[:, None, None, :], groups=b * c)
    return y.reshape(b, c, h, w)


def strong_view(
    x: Tensor,
    generator: torch.Generator,
    p_jitter: float = 0.8,
    brightness: float = 0.5,
    contrast: float = 0.5,
    p_blur: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
) -> Tensor:
    """A strong photometric view of grey images ``x`` (B, C, H, W) in [0, 1], independent per sample.

    UniMatch's ``ColorJitter(0.5, 0.5, 0.5, 0.25)`` with p=0.8: brightness and contrast factors uniform
    in [1 - 0.5, 1 + 0.5], applied in a random order per sample with clamping after each (as torchvision
    does). Saturation and hue are no-ops on single-channel grey images (the reference applies them to
    PIL 'L' images, where they change nothing), so they are left out. Then a Gaussian blur with sigma
    uniform in ``sigma`` with p=0.5, and a final clamp to [0, 1]. (The reference also quantises to
    uint8 through PIL; we keep floats.)
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise DataError(f"strong_view expects float images shaped (B, C, H, W), got {x.dtype} {tuple(x.shape)}.")
    b, dev = x.shape[0], x.device
    r = _rand((b, 6), generator, dev).to(x.dtype)
    jitter = (r[:, 0] < p_jitter)[:, None, None, None]
    bright = (1.0 + brightness * (2.0 * r[:, 1] - 1.0))[:, None, None, None]
    contr = (1.0 + contrast * (2.0 * r[:, 2] - 1.0))[:, None, None, None]
    bright_first = (r[:, 3] < 0.5)[:, None, None, None]

    xb = (x * bright).clamp(0.0, 1.0)
    bc = _blend_contrast(xb, contr)
    cb = (_blend_contrast(x, contr) * bright).clamp(0.0, 1.0)
    out = torch.where(jitter, torch.where(bright_first, bc, cb), x)

    blur_sigma = torch.where(r[:, 4] < p_blur, sigma[0] + (sigma[1] - sigma[0]) * r[:, 5], torch.zeros_like(r[:, 5]))
    radius = int(math.ceil(3.0 * sigma[1]))  # fixed: no host sync to find the largest sigma
    out = gaussian_blur(out, blur_sigma, radius=radius)
    return out.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------- CutMix
def cutmix_masks(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
    device: torch.device | str | None = None,
) -> Tensor:
    """Boolean CutMix boxes (B, H, W): with probability ``p`` one axis-aligned box per sample.

    As UniMatch's ``obtain_cutmix_box``: box area a uniform fraction in ``area`` of the image, aspect
    h/w uniform in ``ratio``; aspects whose box does not fit are redrawn, then the box position is
    uniform over the positions where it fits. Samples without CutMix get an all-False mask.
    """
    if not (0 < area[0] <= area[1] <= 1 and 0 < ratio[0] <= ratio[1] and 0 <= p <= 1):
        raise ConfigError(f"Bad CutMix settings p={p}, area={area}, ratio={ratio}; use 0<area<=1, 0<ratio.")
    gdev = generator.device
    apply = torch.rand(batch, generator=generator, device=gdev) < p
    size = (area[0] + (area[1] - area[0]) * torch.rand(batch, generator=generator, device=gdev)) * height * width
    bw = torch.zeros(batch, dtype=torch.long, device=gdev)
    bh = torch.zeros_like(bw)
    todo = torch.ones(batch, dtype=torch.bool, device=gdev)
    for _ in range(100):  # vectorised rejection of aspects that don't fit; almost always 1-2 rounds
        asp = ratio[0] + (ratio[1] - ratio[0]) * torch.rand(batch, generator=generator, device=gdev)
        cw = torch.sqrt(size / asp).round().long().clamp_min(1)
        ch = torch.sqrt(size * asp).round().long().clamp_min(1)
        ok = todo & (cw <= width) & (ch <= height)
        bw, bh, todo = torch.where(ok, cw, bw), torch.where(ok, ch, bh), todo & ~ok
        if not bool(todo.any()):
            break
    bw, bh = torch.where(todo, bw.new_tensor(min(width, height)), bw), torch.where(todo, bh.new_tensor(min(width, height)), bh)
    x0 = (torch.rand(batch, generator=generator, device=gdev) * (width - bw + 1)).long()
    y0 = (torch.rand(batch, generator=generator, device=gdev) * (height - bh + 1)).long()
    dev = gdev if device is None else torch.device(device)
    x0, y0, bw, bh, apply = (to_device(t, dev) for t in (x0, y0, bw, bh, apply))
    xs = torch.arange(width, device=dev)[None, None, :]
    ys = torch.arange(height, device=dev)[None, :, None]
    inside = (xs >= x0[:, None, None]) & (xs < (x0 + bw)[:, None, None])
    inside = inside & (ys >= y0[:, None, None]) & (ys < (y0 + bh)[:, None, None])
    return inside & apply[:, None, None]


def apply_cutmix(x: Tensor, x_mix: Tensor, mask: Tensor) -> Tensor:
    """Take ``x_mix`` where ``mask`` (B, H, W) is True, else ``x``; images (B, C, H, W) or maps (B, H, W)."""
    if x.shape != x_mix.shape or mask.shape != (x.shape[0], *x.shape[-2:]):
        raise DataError(
            f"CutMix needs matching shapes: x {tuple(x.shape)}, x_mix {tuple(x_mix.shape)}, "
            f"mask {tuple(mask.shape)} (B, H, W)."
        )
    m = mask[:, None] if x.dim() == 4 else mask
    return torch.where(m, x_mix, x)
