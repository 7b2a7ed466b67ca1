"""Writing masks: NIfTI with the source's affine, TIFF, one PNG per slice.

Writes are atomic: temporary files in the target folder are renamed over the targets only once all
of them are written, so a failure (missing folder, no permission, full disk) leaves nothing half-written
and raises ``StorageError`` with a sentence (``checkpoint.atomic_paths``, the package's one atomic writer).
The NIfTI axis convention is described in ``formats.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_paths, storage_error
from ..errors import DataError, StorageError
from .formats import array_to_nifti_affine
from .io import file_kind
from .outputs import check_new_files, check_not_an_input
from .volume import Volume, coerce_labels


def _mask_array(mask: np.ndarray) -> np.ndarray:
    arr = coerce_labels(mask, "mask to write")
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise DataError(f"Can only write 2D or 3D masks, got shape {arr.shape}.")
    if arr.dtype.itemsize > 2:
        raise DataError(f"The mask holds class {int(arr.max())}; at most 65535 classes can be written.")
    return arr


def write_mask(path: str | os.PathLike, mask: np.ndarray, like: Volume | None = None,
               overwrite: bool = True) -> list[Path]:
    """Write ``mask`` (array order, uint8 or uint16 when > 255 classes) and return the files written.

    A target that is ``like.source`` (the image the mask was made from, also through a link) is refused
    with ``DataError``; with ``overwrite=False`` an existing target is refused with ``StorageError``.
    Both checks run before anything is written.

    * ``.nii`` / ``.nii.gz``: NIfTI with ``like``'s affine (array-order convention of this module);
      without one, a diagonal affine from ``like.spacing`` (or identity).
    * ``.tif`` / ``.tiff``: one 2D/3D TIFF (ImageJ-style with pixel size when the spacing is known).
    * a folder, or a ``.png`` path: one PNG per slice, ``<stem>_0000.png``, ... (a 2D mask to ``x.png``
      writes just ``x.png``); a name with ``{}`` is a pattern filled with the slice number.
    """
    if not str(path).strip():
        raise DataError("The mask's file name is empty; give a file (.nii.gz, .tif, .png) or a folder.")
    path = Path(path)
    arr = _mask_array(mask)
    if like is not None and arr.shape != like.shape:
        raise DataError(f"The mask has shape {arr.shape} but '{like.name}' has shape {like.shape}; they must match.")
    spacing = tuple(like.spacing) if like is not None and like.spacing is not None else None
    kind = file_kind(path)
    is_dir_target = path.is_dir() or str(path).endswith(os.sep) or (path.suffix == "" and not path.exists())
    source = like.source if like is not None else None

    def guard(targets: list[Path]) -> None:
        check_not_an_input(targets, {"image": source}, "choose another file name for the mask")
        check_new_files(targets, overwrite, "choose another name, or allow replacing it (--overwrite)")

    if kind == "nifti":
        return _write_nifti(path, arr, like, spacing, guard)
    if kind == "tiff":
        return _write_tiff(path, arr, spacing, guard)
    if is_dir_target or path.suffix.lower() == ".png":
        return _write_pngs(path, arr, like, is_dir_target, guard)
    raise DataError(f"Cannot write masks as '{path.name}'; use .nii.gz, .nii, .tif, .tiff, .png or a folder.")


def _write_nifti(path: Path, arr: np.ndarray, like: Volume | None, spacing, guard) -> list[Path]:
    guard([path])
    import nibabel as nib

    n = arr.ndim
    if like is not None and like.affine is not None:
        affine = array_to_nifti_affine(like.affine, n)
    else:
        diag = list(spacing[::-1]) if spacing else [1.0] * n
        affine = np.diag(diag + [1.0] * (4 - n))
    img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(tuple(range(n))[::-1])), affine)
    img.header.set_data_dtype(arr.dtype)
    # Keep the source's qform/sform codes so viewers pick the same transform; zooms follow the affine.
    q, s = (like.metadata.get("nifti_codes") if like is not None else None) or (0, 0)
    img.set_qform(affine, code=int(q))
    img.set_sform(affine, code=int(s) if (q or s) else 2)
    with atomic_paths([path], make_folders=False, keep_extension=True) as (tmp,):
        nib.save(img, str(tmp))
    return [path]


def _write_tiff(path: Path, arr: np.ndarray, spacing, guard) -> list[Path]:
    guard([path])
    import tifffile

    kwargs: dict = {"compression": "zlib"}
    if spacing:  # ImageJ-style so Fiji/napari/our reader see the pixel size
        meta = {"axes": "ZYX", "spacing": float(spacing[0])} if arr.ndim == 3 else {"axes": "YX"}
        kwargs = {"imagej": True, "resolution": (1.0 / spacing[-1], 1.0 / spacing[-2]), "metadata": meta}
    with atomic_paths([path], make_folders=False, keep_extension=True) as (tmp,):
        tifffile.imwrite(str(tmp), arr, **kwargs)
    return [path]


def _write_pngs(path: Path, arr: np.ndarray, like: Volume | None, is_dir_target: bool, guard) -> list[Path]:
    from PIL import Image

    slices = arr[None] if arr.ndim == 2 else arr
    if is_dir_target:
        stem = re.sub(r"[^\w\-. ()]+", "_", like.name) if like is not None else "mask"
        targets = [path / f"{stem}_{i:04d}.png" for i in range(len(slices))]
    elif "{" in path.name:
        fill = (lambda i: path.name.replace("{}", f"{i:04d}")) if "{}" in path.name else path.name.format
        try:
            targets = [path.parent / fill(i) for i in range(len(slices))]
        except (ValueError, IndexError, KeyError) as exc:
            raise DataError(f"'{path.name}' is not a valid file-name pattern; use e.g. 'mask_{{}}.png'.") from exc
    elif arr.ndim == 2:
        targets = [path]
    else:
        targets = [path.parent / f"{path.stem}_{i:04d}.png" for i in range(len(slices))]
    guard(targets)
    created = False
    if is_dir_target and not path.exists():
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise StorageError(f"Cannot write {path}: {blocker} is a file, not a folder; choose another folder.")
        try:
            path.mkdir()
            created = True
        except OSError as exc:
            raise storage_error(path, exc) from exc
    try:
        with atomic_paths(targets, make_folders=False, keep_extension=True) as temps:
            for tmp, sl in zip(temps, slices):
                img = Image.fromarray(sl)  # uint8 -> mode L, uint16 -> mode I;16
                img.save(str(tmp), format="PNG")
    except StorageError:
        if created:  # a refused write leaves no empty folder behind
            try:
                path.rmdir()
            except OSError:
                pass
        raise
    return targets
