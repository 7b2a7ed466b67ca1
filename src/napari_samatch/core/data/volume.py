"""A volume: one image array with its labels, spacing, affine and provenance.

Axis order is always the array's own order: ``(H, W)`` for a 2D image and ``(Z, H, W)`` for a 3D
volume (``Z`` is the slice axis that painting and training work on by default). ``spacing`` and
``affine`` describe that same order, so code never has to remember where a file came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError

# ITU-R BT.601 luma weights (R, G, B): the classic "grayscale" conversion used by PIL and OpenCV.
BT601_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_image_dtype(arr: np.ndarray, who: str = "The image") -> None:
    """Refuse pixel types that a float32 cast would silently mangle: complex, boolean, text, objects."""
    kind = np.asarray(arr).dtype.kind
    if kind == "c":
        raise DataError(f"{who} is complex-valued; save its magnitude instead (e.g. np.abs(image)) and open that.")
    if kind == "b":
        raise DataError(f"{who} is boolean (true/false), which looks like a mask; open it as labels, or save the "
                        "image with a number type (e.g. image.astype(np.float32)).")
    if kind not in "iuf":
        raise DataError(f"{who} has dtype {np.asarray(arr).dtype}, not numbers; save the image with a number type "
                        "(e.g. float32).")


def to_single_channel(arr: np.ndarray, rgb: bool | None = None, who: str = "The image") -> np.ndarray:
    """Return a single-channel float32 image; colour images become their luminance.

    An array whose last axis has length 3 (RGB) or 4 (RGBA) and that has 3 or 4 dimensions is
    treated as colour (``rgb=None``, the readers' case; pass ``rgb=True/False`` to decide yourself).
    Colour is reduced to luminance with the ITU-R BT.601 weights
    ``Y = 0.299 R + 0.587 G + 0.114 B``; an alpha channel is dropped, not multiplied in. Grayscale
    images stored as RGB (R = G = B, e.g. BUSI ultrasound) therefore keep their exact values.
    Other arrays are only cast to float32. Complex, boolean and non-numeric arrays raise ``DataError``
    (``who`` names the image in the message).
    """
    arr = np.asarray(arr)
    check_image_dtype(arr, who)
    if rgb is None:
        rgb = arr.ndim in (3, 4) and arr.shape[-1] in (3, 4)
    if not rgb:
        return arr.astype(np.float32, copy=False)
    if arr.shape[-1] not in (3, 4):
        raise DataError(
            f"A colour image needs 3 (RGB) or 4 (RGBA) channels in its last axis, got shape {arr.shape}."
        )
    # Element-wise sum rather than a BLAS dot: no thread pool, same result, faster on busy machines.
    w = BT601_WEIGHTS
    out = arr[..., 0].astype(np.float32) * w[0]
    out += arr[..., 1].astype(np.float32) * w[1]
    out += arr[..., 2].astype(np.float32) * w[2]
    return out


def mask_from_colour(arr: np.ndarray, name: str = "mask") -> np.ndarray:
    """A colour (RGB/RGBA) mask is accepted when it is gray (R = G = B); alpha is ignored."""
    rgb = np.asarray(arr)[..., :3]
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise DataError(
            f"The mask '{name}' is a colour image; save masks as grayscale or indexed (palette) images "
            "whose values are class numbers."
        )
    return rgb[..., 0]


def coerce_labels(arr: np.ndarray, what: str = "label array") -> np.ndarray:
    """Return ``arr`` as an unsigned integer label array (uint8 when it fits, else uint16/uint32).

    Booleans become 0/1; floats are accepted when every value is a whole number (NIfTI masks are
    often stored as float). Negative or fractional values raise ``DataError``.
    """
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise DataError(
                f"The {what} holds non-integer values; labels must be whole class numbers "
                "(0 = background). Round or threshold the mask first."
            )
    elif arr.dtype.kind not in "iu":
        raise DataError(f"The {what} has dtype {arr.dtype}; labels must be integers (0 = background).")
    if arr.size == 0:
        return arr.astype(np.uint8)
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise DataError(f"The {what} holds negative values (min {lo}); labels must be 0 (background) or more.")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dtype).max:
            return arr.astype(dtype, copy=False)
    raise DataError(f"The {what} holds class numbers up to {hi}, which is far too many classes.")


@dataclass
class Volume:
    """An image with optional labels and geometry.

    Attributes:
        image: ``(H, W)`` or ``(Z, H, W)`` single-channel array (float32 from the readers).
        labels: integer class array of the same shape (0 = background), or ``None``.
        spacing: physical size of a voxel along each array axis, in array order; ``None`` = unknown.
        affine: 4x4 voxel-to-world matrix of the array *as stored here* (see ``core.data.formats`` for the
            NIfTI axis convention); ``None`` = unknown.
        name: short display name.
        source: the file or folder it was read from, if any.
        metadata: free-form extras (``class_names``, ``category``, ...).
    """

    image: np.ndarray
    labels: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    name: str = "volume"
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return int(np.ndim(self.image))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.image))

    def validate(self, num_classes: int | None = None) -> Volume:
        """Raise ``DataError`` with a sentence on what to fix when the volume cannot be used.

        Returns ``self`` so calls can be chained.
        """
        img = np.asarray(self.image)
        who = f"Image '{self.name}'"
        if img.ndim not in (2, 3):
            hint = (
                " Pick one channel or time point first (e.g. image[..., 0] or image[t])."
                if img.ndim > 3
                else " A 1D signal is not an image."
            )
            raise DataError(f"{who} has {img.ndim} dimensions {img.shape}; only 2D (H, W) or 3D (Z, H, W) work.{hint}")
        if img.size == 0:
            raise DataError(f"{who} is empty (shape {img.shape}); open a file that holds pixels.")
        if img.dtype.kind == "c":
            raise DataError(f"{who} is complex-valued; use its magnitude first, e.g. np.abs(image).astype(np.float32).")
        if img.dtype.kind == "b":
            raise DataError(
                f"{who} is boolean, which looks like a mask; load it as labels, or convert it with "
                "image.astype(np.float32) if it really is the image."
            )
        if img.dtype.kind not in "iuf":
            raise DataError(f"{who} has dtype {img.dtype}; convert it to a number type, e.g. image.astype(np.float32).")
        # NaN/Inf propagate into a float64 sum (which cannot overflow for float32 data): one pass, no
        # full-size temporary; count them only when there are some.
        if img.dtype.kind == "f" and not np.isfinite(np.sum(img, dtype=np.float64)):
            bad = int(img.size - np.count_nonzero(np.isfinite(img)))
            if bad:
                raise DataError(
                    f"{who} holds {bad} non-finite value(s) (NaN or Inf); replace them, e.g. "
                    "np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)."
                )
        if self.spacing is not None:
            sp = tuple(self.spacing)
            if len(sp) != img.ndim or not all(np.isfinite(s) and s > 0 for s in sp):
                raise DataError(
                    f"{who} has spacing {sp}; it needs {img.ndim} positive numbers, one per axis, or None."
                )
        if self.affine is not None:
            aff = np.asarray(self.affine)
            if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
                raise DataError(f"{who} has an affine of shape {aff.shape}; it must be a finite 4x4 matrix or None.")
        if self.labels is not None:
            self._validate_labels(img.shape, num_classes)
        return self

    def _validate_labels(self, shape: tuple[int, ...], num_classes: int | None) -> None:
        lab = np.asarray(self.labels)
        who = f"The labels of '{self.name}'"
        if lab.shape != shape:
            raise DataError(
                f"{who} have shape {lab.shape} but the image has shape {shape}; "
                "they must match voxel for voxel (resample or re-export the mask)."
            )
        if lab.dtype.kind == "f":
            if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
                raise DataError(f"{who} hold non-integer values; labels must be whole class numbers (0 = background).")
        elif lab.dtype.kind not in "iub":
            raise DataError(f"{who} have dtype {lab.dtype}; labels must be integers (0 = background).")
        if lab.size and lab.dtype.kind != "b":
            lo, hi = lab.min(), lab.max()
            if lo < 0:
                raise DataError(f"{who} hold negative values (min {lo}); use 0 for background, 1, 2, ... for classes.")
            if num_classes is not None and hi >= num_classes:
                raise DataError(
                    f"{who} hold class {int(hi)} but only {num_classes} classes (0..{num_classes - 1}) are "
                    "configured; add classes or repaint those voxels."
                )

    def labeled_slices(self, axis: int = 0) -> np.ndarray:
        """Indices of the slices along ``axis`` that hold any non-zero label (2D: ``[0]`` or ``[]``)."""
        if self.labels is None:
            return np.zeros(0, dtype=np.int64)
        lab = np.asarray(self.labels)
        if lab.ndim == 2:
            return np.array([0] if lab.any() else [], dtype=np.int64)
        axis = check_axis(axis, lab.ndim)
        others = tuple(a for a in range(lab.ndim) if a != axis)
        return np.flatnonzero(lab.any(axis=others)).astype(np.int64)

    def num_slices(self, axis: int = 0) -> int:
        """Number of slices along ``axis`` (1 for a 2D image)."""
        if self.ndim == 2:
            return 1
        return self.shape[check_axis(axis, self.ndim)]

    def as_3d(self, axis: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and labels as ``(slices, H, W)`` views: a 2D image is one slice; ``axis`` moves first."""
        return as_3d(self.image, axis), (None if self.labels is None else as_3d(self.labels, axis))


def as_3d(arr: np.ndarray, axis: int = 0) -> np.ndarray:
    """View ``arr`` as ``(slices, H, W)``: 2D gains a leading axis of 1; 3D has ``axis`` moved first."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise DataError(f"Expected a 2D or 3D array, got shape {arr.shape}.")
    return np.moveaxis(arr, check_axis(axis, 3), 0)


def check_axis(axis: int, ndim: int) -> int:
    """``axis`` as 0..ndim-1 (negative counts from the end); a ``DataError`` sentence when there is no such axis."""
    if not -ndim <= axis < ndim:
        raise DataError(f"Slice axis {axis} does not exist in a {ndim}D image; use 0..{ndim - 1} (--axis).")
    return axis % ndim


