"""Small cohort folders for the cohort tests (the CLI, the core state, the review, the Cohort dock): NIfTI volumes
``p1``, ``p2``, ``p3`` in ``images/`` and a label file for ``p1`` in ``labels/`` that paints slices 1 and 4.

Each test file keeps its own pictures (what its assertions count on: a square, a disc moving with the patient,
the dock's larger circle); what is shared is how a cohort is laid out and written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import nibabel as nib
import numpy as np

SHAPE = (6, 24, 20)  # (Z, Y, X) of the headless tests' volumes


def save_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    """Write an array in array order ``(z, y, x)`` as NIfTI ``(x, y, z)``, the readers' convention."""
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.T), affine), str(path))
    return path


def painted(labels: np.ndarray, slices: Iterable[int]) -> np.ndarray:
    """Only ``slices`` of ``labels`` kept: what a user who painted those slices saves."""
    slices = list(slices)
    out = np.zeros_like(labels)
    out[slices] = labels[slices]
    return out


def square_volume(seed: int, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with a bright square (class 1) on every slice, and its full labels."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 0.1, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[:, 6:16, 5:13] = 1
    image[labels == 1] += 1.0
    return image, labels


def patient_affine(seed: int) -> np.ndarray:
    """Anisotropic voxels and an origin that differs per patient: a mask on the wrong grid shows."""
    return np.array([[0.9, 0, 0, -10.0 - seed], [0, 1.1, 0, 5.0], [0, 0, 3.0, 7.0 * seed], [0, 0, 0, 1]])


def write_cohort(root: Path, volume: Callable[[int], tuple[np.ndarray, np.ndarray]],
                 affine: Callable[[int], np.ndarray], painted_slices: Iterable[int] = (1, 4)) -> tuple[Path, Path]:
    """``root/images/p{k}.nii.gz`` for k = 1, 2, 3 from ``volume(k) -> (image, full labels)``, and
    ``root/labels/p1.nii.gz`` holding p1's labels on ``painted_slices`` only; p2 and p3 have no label file."""
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    for k in (1, 2, 3):
        image, full = volume(k)
        save_nifti(images / f"p{k}.nii.gz", image, affine(k))
        if k == 1:
            save_nifti(labels / "p1.nii.gz", painted(full, painted_slices), affine(k))
    return images, labels
