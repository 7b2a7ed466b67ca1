"""The per-format readers: NIfTI, TIFF, SSL4MIS HDF5 and 2D images (PNG/JPEG/BMP); DICOM is ``dicom.py``.

Each reader takes ``(path, as_labels)`` and returns ``(image, labels, spacing, affine, metadata)`` in array
order; ``io.py`` picks one by the file's kind (``READERS``), checks the file first and turns library failures
into a ``DataError`` that names it.

NIfTI axis convention: NIfTI stores voxels as ``(i, j, k) = (X, Y, Z)``; here arrays are
``(Z, Y, X)`` (slice axis first), so the data is transposed on reading (array axis ``a`` is NIfTI
axis ``ndim - 1 - a``) and ``Volume.affine`` is the NIfTI affine with its first ``ndim`` columns
reordered the same way: ``affine @ [z, y, x, 1]`` is the world position of array voxel
``[z, y, x]``. ``spacing`` is the header zooms in array order. Writing reverses both steps, so
``write_mask(path, labels, like=vol)`` produces a file whose voxel-to-world mapping equals the source's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError, DataWarning
from .volume import coerce_labels, mask_from_colour, to_single_channel

SUPPORTED = ("NIfTI (.nii, .nii.gz), TIFF (.tif, .tiff), SSL4MIS HDF5 (.h5), PNG/JPEG/BMP (.png, .jpg, .jpeg, .bmp), "
             "DICOM (a folder holding one series, or a .dcm file)")
IMAGE_2D_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
# file extension -> kind, and the kind's name in messages
KINDS = {".nii": "nifti", ".nii.gz": "nifti", ".tif": "tiff", ".tiff": "tiff", ".h5": "h5", ".hdf5": "h5"}
KINDS.update({e: "image2d" for e in IMAGE_2D_EXTS})
KINDS[".dcm"] = "dicom"
KIND_NAMES = {"nifti": "NIfTI", "tiff": "TIFF", "h5": "SSL4MIS HDF5", "image2d": "an image", "dicom": "DICOM"}


def binary_as_foreground(labels: np.ndarray, who: str) -> np.ndarray:
    """A mask holding 0 and one other value that other tools write for "foreground" (255, 65535) is read as
    class 1, the rule of ``--folder`` (any value > 0 is the lesion); a ``DataWarning`` says so."""
    top = int(labels.max()) if labels.size else 0
    if top not in (255, 65535) or np.count_nonzero((labels != 0) & (labels != top)):
        return labels
    warnings.warn(f"The mask {who} holds only 0 and {top}: read as a binary mask ({top} = foreground, class 1).",
                  DataWarning, stacklevel=3)
    return (labels == top).astype(np.uint8)


def read_nifti(path: Path, as_labels: bool):
    import nibabel as nib

    img = nib.load(str(path))
    shape = img.shape
    while len(shape) > 3 and shape[-1] == 1:  # (X, Y, Z, 1) is still a volume
        shape = shape[:-1]
    if len(shape) > 3:
        raise DataError(
            f"'{path.name}' is {len(shape)}D {tuple(shape)} (e.g. a cine or multi-channel series); "
            "save one 3D frame per file (e.g. the ED/ES frames) and open that."
        )
    # A corrupt header can claim gigabytes: refuse sizes the file cannot hold (zlib expands <= ~1030x).
    need = int(np.prod(shape, dtype=np.float64)) * img.get_data_dtype().itemsize
    have = path.stat().st_size * (1100 if path.name.lower().endswith(".gz") else 1)
    if need > have:
        raise DataError(f"'{path.name}' is truncated or corrupt: its header describes {need} bytes of voxels "
                        f"but the file holds far fewer. Supported formats: {SUPPORTED}.")
    data = np.asanyarray(img.dataobj).reshape(shape)
    if not as_labels:
        data = to_single_channel(data, rgb=False, who=f"'{path.name}'")
    n = data.ndim
    arr = np.ascontiguousarray(data.transpose(tuple(range(n))[::-1]))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:n])
    meta = {"nifti_codes": (int(img.header["qform_code"]), int(img.header["sform_code"]))}
    return arr, None, zooms[::-1], nifti_to_array_affine(img.affine, n), meta


def nifti_to_array_affine(affine: np.ndarray, ndim: int = 3) -> np.ndarray:
    """NIfTI ``(i, j, k)`` affine <-> affine of the transposed ``(k, j, i)`` array (self-inverse).

    Array axis ``a`` is NIfTI axis ``ndim - 1 - a``, so the first ``ndim`` columns are reversed.
    """
    perm = list(range(ndim))[::-1] + list(range(ndim, 4))
    return np.asarray(affine, dtype=np.float64)[:, perm]


array_to_nifti_affine = nifti_to_array_affine  # the column swap is its own inverse


def read_tiff(path: Path, as_labels: bool):
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        series = tif.series[0]
        axes = series.axes
        data = series.asarray()
        spacing = _tiff_spacing(tif, data.ndim - (1 if axes.endswith("S") else 0))
    if axes.endswith("S") and data.shape[-1] in (3, 4):
        data = to_single_channel(data, rgb=True) if not as_labels else mask_from_colour(data, path.name)
    elif not as_labels:
        data = to_single_channel(data, rgb=False, who=f"'{path.name}'")
    if data.ndim > 3:
        raise DataError(
            f"'{path.name}' has {data.ndim} dimensions (axes {axes}, shape {data.shape}); "
            "save a single channel / time point as a 2D or 3D TIFF."
        )
    return data, None, spacing, None, {}


def _tiff_spacing(tif, ndim: int) -> tuple[float, ...] | None:
    """Pixel size from ImageJ metadata / resolution tags; ``None`` when the file does not say."""
    if not tif.is_imagej or ndim not in (2, 3):
        return None
    page = tif.pages[0]
    try:
        xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
        sx, sy = xr[1] / xr[0], yr[1] / yr[0]
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return None
    sz = float((tif.imagej_metadata or {}).get("spacing", 1.0))
    return (sy, sx) if ndim == 2 else (sz, sy, sx)


def read_h5(path: Path, as_labels: bool):
    import h5py

    with h5py.File(str(path), "r") as f:
        if "image" not in f:
            raise DataError(f"'{path.name}' has no 'image' dataset (found: {sorted(f.keys())}); "
                            "expected the SSL4MIS layout ('image' and optional 'label').")
        image = f["image"][()] if not as_labels else None
        labels = coerce_labels(f["label"][()], f"'label' in {path.name}") if "label" in f else None
        labels = binary_as_foreground(labels, f"'label' in '{path.name}'") if labels is not None else None
        spacing = tuple(float(s) for s in f.attrs["spacing"]) if "spacing" in f.attrs else None
    if image is not None:
        image = to_single_channel(image, rgb=False, who=f"The 'image' in '{path.name}'")
    return image, labels, spacing, None, {}


def read_image2d(path: Path, as_labels: bool, any_colour: bool = False):
    from PIL import Image

    with Image.open(str(path)) as im:
        mode = im.mode
        if as_labels:
            data = np.asarray(im)  # 'P' keeps palette indices, '1' gives booleans
            if data.ndim == 3 and not any_colour:
                data = mask_from_colour(data, path.name)
        elif mode in ("RGB", "RGBA"):
            data = to_single_channel(np.asarray(im), rgb=True)
        elif mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
            data = np.asarray(im).astype(np.float32)
        else:  # palette, LA, CMYK, YCbCr, ...: let PIL resolve to RGB first
            data = to_single_channel(np.asarray(im.convert("RGB")), rgb=True)
    return data, None, None, None, {}


READERS = {"nifti": read_nifti, "tiff": read_tiff, "h5": read_h5, "image2d": read_image2d}
