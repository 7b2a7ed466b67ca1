"""A synthetic cardiac short-axis cine volume for demos and tests (no download, no licence).

Geometry per slice, base (slice 0) to apex (last slice): a left-ventricle blood pool (label 3, bright)
inside a myocardium ring (label 2, dark), and a right-ventricle crescent (label 1, bright) hugging the
septum. All of them shrink toward the apex; the RV thins out and vanishes in the last slices. The
image adds body tissue with texture, partial-volume blur, a smooth multiplicative bias field and
Rician noise (magnitude of complex Gaussian noise), the way MR magnitude images look.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import DataError
from .volume import Volume

CLASS_NAMES = ["background", "RV", "Myo", "LV"]
# Mean intensities before bias and noise.
_AIR, _TISSUE, _MYO, _RV, _LV = 0.02, 0.38, 0.22, 0.80, 0.88


def make_cardiac_phantom(shape: tuple[int, int, int] = (12, 160, 160), seed: int = 0) -> Volume:
    """Return a deterministic synthetic cardiac volume: float32 image in [0, 1] and uint8 labels.

    Labels: 0 background, 1 RV, 2 Myo, 3 LV (``metadata['class_names']``). Spacing (8.0, 1.5, 1.5) mm.
    """
    if len(shape) != 3 or min(shape) < 1 or shape[1] < 32 or shape[2] < 32:
        raise DataError(f"The phantom needs a (Z, H, W) shape with H, W >= 32, got {tuple(shape)}.")
    nz, h, w = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    s = min(h, w) / 160.0  # geometry is designed at 160 px and scaled
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Per-volume variation (small, so every seed looks like a heart).
    cy0 = h * 0.5 + rng.uniform(-4, 4) * s
    cx0 = w * 0.54 + rng.uniform(-4, 4) * s
    r_lv0 = (19.0 + rng.uniform(-1.5, 1.5)) * s
    ecc = 1.0 + rng.uniform(0.03, 0.1)  # slightly elliptical LV
    rv_dir = np.pi + rng.uniform(0.2, 0.45)  # RV sits left and a little anterior (up) of the LV

    labels = np.zeros((nz, h, w), np.uint8)
    ideal = np.empty((nz, h, w), np.float32)
    body = ((yy - h * 0.52) / (0.40 * h)) ** 2 + ((xx - w * 0.5) / (0.46 * w)) ** 2 < 1.0
    for z in range(nz):
        t = z / (nz - 1) if nz > 1 else 0.5  # 0 = base, 1 = apex
        cy = cy0 + 3.0 * s * np.sin(np.pi * t)
        cx = cx0 - 4.0 * s * t
        r_lv = r_lv0 * (1.0 - 0.62 * t)
        r_epi = r_lv + (6.0 + 1.5 * t) * s
        d = np.sqrt(((yy - cy) / ecc) ** 2 + ((xx - cx) * ecc) ** 2)
        lv = d < r_lv
        myo = (d >= r_lv) & (d < r_epi)
        # RV crescent: thick in the middle, tapering to the tips; gone near the apex.
        rv_w = 15.0 * s * (1.0 - (t / 0.82) ** 2)
        rv = np.zeros_like(lv)
        if rv_w > 1.5 * s:
            dphi = np.angle(np.exp(1j * (np.arctan2(yy - cy, xx - cx) - rv_dir)))
            amax = np.deg2rad(80.0)
            thick = rv_w * np.sqrt(np.clip(np.cos(dphi / amax * np.pi / 2), 0, None))
            rv = (np.abs(dphi) < amax) & (d >= r_epi) & (d < r_epi + thick)
        lab = labels[z]
        lab[rv], lab[myo], lab[lv] = 1, 2, 3
        img = np.where(body, _TISSUE, _AIR).astype(np.float32)
        fat = (d >= r_epi) & (d < r_epi + 2.5 * s) & ~rv  # thin bright epicardial fat line
        img[fat] = 0.55
        img[rv], img[myo], img[lv] = _RV, _MYO, _LV
        ideal[z] = img

    # Tissue texture (smoothed noise) everywhere inside the body, blood pools a little flatter.
    tex = ndimage.gaussian_filter(rng.standard_normal((nz, h, w)).astype(np.float32), (0.6, 2.0 * s, 2.0 * s))
    tex /= tex.std() + 1e-8
    amp = np.where(labels >= 1, 0.025, np.where(body, 0.06, 0.0)).astype(np.float32)
    img = ndimage.gaussian_filter(ideal + amp * tex, (0, 0.8 * s, 0.8 * s))  # partial-volume blur

    # Smooth multiplicative bias field (coil sensitivity), varying slowly across slices too.
    zn = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    yn, xn = (yy / max(h - 1, 1) * 2 - 1)[None], (xx / max(w - 1, 1) * 2 - 1)[None]
    a = rng.uniform(-0.35, 0.35, size=5)
    bias = np.exp(a[0] * xn + a[1] * yn + a[2] * xn * yn + a[3] * (xn**2 - yn**2) * 0.5 + a[4] * zn * 0.3)
    img = img * (bias / bias.mean())

    sigma = 0.045  # Rician: |signal + complex Gaussian noise|
    n1, n2 = rng.standard_normal((2, nz, h, w), dtype=np.float32) * sigma
    img = np.sqrt((img + n1) ** 2 + n2**2)
    lo, hi = float(img.min()), float(img.max())
    img = ((img - lo) / (hi - lo)).astype(np.float32)
    meta = {"class_names": list(CLASS_NAMES), "seed": int(seed), "synthetic": True}
    return Volume(img, labels, (8.0, 1.5, 1.5), None, name="cardiac phantom", source=None, metadata=meta)


def sample_labeled_slices(volume: Volume) -> list[int]:
    """Three well-spread slices (basal, mid, apical) that the demo treats as hand-labeled."""
    n = volume.num_slices(0)
    if n < 3:
        return list(range(n))
    picks = [int(round(f * (n - 1))) for f in (0.1, 0.5, 0.85)]
    # Keep them distinct for short volumes.
    picks[1] = min(max(picks[1], picks[0] + 1), n - 2)
    picks[2] = min(max(picks[2], picks[1] + 1), n - 1)
    return picks
