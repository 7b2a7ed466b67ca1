"""Reading images and masks: which reader a file needs, the checks before it, and the folder layouts.

Formats: TIFF (2D/3D), NIfTI (``.nii``/``.nii.gz``), SSL4MIS HDF5 (``.h5`` with ``image`` and an
optional ``label``), PNG/JPEG/BMP (single 2D images), DICOM (a folder holding one series, or one ``.dcm``
image; ``dicom.py``) and folders of 2D images with ``*_mask*.png`` masks (BUSI layout). The per-format
readers and the NIfTI axis convention are in ``formats.py``; writing masks is ``writers.py``.

Every user-causable failure raises ``DataError``.
"""

from __future__ import annotations

import errno
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError, DataWarning
from .dicom import is_dicom_folder, read_dicom_file, read_dicom_series
from .formats import IMAGE_2D_EXTS, KIND_NAMES, KINDS, READERS, SUPPORTED, binary_as_foreground, read_image2d
from .volume import Volume, coerce_labels

_MASK_RE = re.compile(r"^(?P<base>.+?)_mask(?:_\d+)?$", re.IGNORECASE)


def file_kind(path: str | os.PathLike) -> str | None:
    """``'nifti' | 'tiff' | 'h5' | 'image2d' | 'dicom'`` from the file name (a folder: ``'dicom'`` when it holds
    DICOM files), or ``None`` if unsupported."""
    if Path(path).is_dir():
        return "dicom" if is_dicom_folder(path) else None
    name = Path(path).name.lower()
    ext = ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix
    return KINDS.get(ext)


def file_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def natural_key(text: str) -> list:
    """Sort key that orders ``'benign (2)'`` before ``'benign (10)'``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text.lower())]


# ----------------------------------------------------------------------------------------- reading
@contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Turn any library failure while reading ``path`` into a DataError that names the file."""
    try:
        yield
    except DataError:
        raise
    except PermissionError as exc:  # not "truncated or corrupt": the file may be fine, the user may not read it
        raise _unreadable(path, exc) from exc
    except MemoryError as exc:
        raise DataError(f"'{path}' is too large to load into memory ({exc}).") from exc
    except Exception as exc:  # noqa: BLE001 - third-party readers raise anything on corrupt input
        if isinstance(exc, OSError) and (exc.errno in (errno.EACCES, errno.EPERM) or "errno = 13" in str(exc)):
            raise _unreadable(path, exc) from exc  # h5py's refused open is a plain OSError
        raise DataError(
            f"Could not read '{path}' as {what}: it looks truncated or corrupt ({type(exc).__name__}: {exc}). "
            f"Supported formats: {SUPPORTED}."
        ) from exc


def _check_file(path: str | os.PathLike) -> tuple[Path, str]:
    path = Path(path)
    kind = file_kind(path)
    if path.is_dir():
        if kind == "dicom":
            return path, kind
        raise DataError(f"'{path}' is a folder; give an image file, or a folder holding one DICOM series (this one "
                        f"holds no DICOM file). Supported formats: {SUPPORTED}.")
    if kind is None:
        raise DataError(f"'{path.name}' has an unsupported file type. Supported formats: {SUPPORTED}.")
    if not path.exists():
        raise DataError(f"'{path}' does not exist; check the path.")
    if not path.is_file():
        raise DataError(f"'{path}' is not a file.")
    if path.stat().st_size == 0:
        raise DataError(f"'{path}' is empty (0 bytes): it holds no image. Supported formats: {SUPPORTED}.")
    try:  # every library reports a refused open differently (h5py as a generic OSError): ask once, here
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    return path, kind


def _unreadable(path: Path, exc: OSError) -> DataError:
    return DataError(f"No permission to read '{path}' ({exc.strerror or exc}); ask its owner to let you read it "
                     "(e.g. chmod g+r), or copy it somewhere you can.")


def read_volume(path: str | os.PathLike) -> Volume:
    """Read an image file into a validated ``Volume`` (labels only from SSL4MIS ``.h5`` files)."""
    path, kind = _check_file(path)
    if kind == "dicom":
        with reading(path, "DICOM"):
            vol = read_dicom_series(path) if path.is_dir() else read_dicom_file(path)
        return vol.validate()
    with reading(path, KIND_NAMES[kind]):
        image, labels, spacing, affine, meta = READERS[kind](path, False)
    vol = Volume(image, labels, spacing, affine, name=file_stem(path), source=str(path), metadata=meta)
    return vol.validate()


def read_label(path: str | os.PathLike, like: Volume | None = None) -> np.ndarray:
    """Read a mask file (NIfTI, TIFF, ``.h5`` 'label', PNG, or a folder of per-slice PNGs).

    Returns an unsigned integer array in array order (NIfTI is transposed like ``read_volume``).
    With ``like``, the shape must equal ``like``'s image shape.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted((f for f in p.iterdir() if f.suffix.lower() == ".png" and not f.name.startswith(".")),
                       key=lambda f: natural_key(f.name))
        if not files:
            raise DataError(f"Folder '{p}' holds no .png mask slices.")
        slices = [_read_mask_file(f)[0] for f in files]
        if len({s.shape for s in slices}) != 1:
            raise DataError(f"The mask slices in '{p}' have different sizes; they cannot form one volume.")
        labels = binary_as_foreground(np.stack(slices), f"folder '{p.name}'")  # one rule (and line) for all
        if like is not None and like.ndim == 2 and labels.shape[0] == 1:
            labels = labels[0]
    else:
        labels, spacing, affine = _read_mask_file(p)
        labels = binary_as_foreground(labels, f"'{p.name}'")
        if like is not None and labels.shape == like.shape:
            _check_same_grid(p.name, spacing, affine, like)
    if like is not None and labels.shape != like.shape:
        raise DataError(
            f"The mask '{p.name}' has shape {labels.shape} but the image '{like.name}' has shape {like.shape}; "
            "pick the mask that belongs to this image."
        )
    return labels


def _read_mask_file(path: Path) -> tuple[np.ndarray, tuple | None, np.ndarray | None]:
    """One mask file as class numbers (``coerce_labels``), with its spacing and affine when it has them."""
    p, kind = _check_file(path)
    if kind == "dicom":
        raise DataError(f"'{p.name}' is DICOM; masks are read from NIfTI, TIFF, .h5 or PNG files, so export the "
                        "mask in one of those (e.g. NIfTI on the image's grid).")
    with reading(p, f"a mask ({KIND_NAMES[kind]})"):
        arr, h5_labels, spacing, affine, _ = READERS[kind](p, True)
    if kind == "h5":
        if h5_labels is None:
            raise DataError(f"'{p}' has no 'label' dataset; it holds no mask.")
        arr = h5_labels
    return coerce_labels(arr, f"mask in '{p.name}'"), spacing, affine


def _check_same_grid(name: str, spacing, affine, like: Volume) -> None:
    """Refuse a mask whose geometry (NIfTI affine, else voxel size) disagrees with its image's: same shape,
    but flipped, shifted or on other voxels, it would train on misplaced labels. Float noise is tolerated."""
    if affine is not None and like.affine is not None:
        a, b = np.asarray(affine, np.float64), np.asarray(like.affine, np.float64)
        if not np.allclose(a, b, rtol=1e-4, atol=1e-3):
            how = ("their axes differ: flipped, rotated or other voxel sizes" if not np.allclose(a[:3, :3], b[:3, :3],
                   rtol=1e-4, atol=1e-3) else f"their origins differ: {np.round(a[:3, 3], 2).tolist()} vs "
                   f"{np.round(b[:3, 3], 2).tolist()}")
            raise DataError(
                f"The mask '{name}' and the image '{like.name}' are on different grids (NIfTI affines; {how}), so the "
                "labels would land on the wrong voxels; re-export the mask on the image's grid (resample it with "
                "the image as reference).")
    elif spacing is not None and like.spacing is not None and len(spacing) == len(like.spacing):
        if not np.allclose(spacing, like.spacing, rtol=1e-3, atol=1e-6):
            raise DataError(
                f"The mask '{name}' has voxel size {tuple(round(float(v), 4) for v in spacing)} but the image "
                f"'{like.name}' {tuple(round(float(v), 4) for v in like.spacing)}; they are not on the same grid, "
                "so re-export the mask on the image's grid.")


def _read_binary_mask(path: Path) -> np.ndarray:
    """BUSI-style mask: a value > 0 in any colour channel (alpha ignored) is foreground."""
    path, kind = _check_file(path)
    with reading(path, "a mask image"):
        if kind == "image2d":
            raw = read_image2d(path, True, any_colour=True)[0]
        else:
            raw = READERS[kind](path, True)[0]
    raw = np.asarray(raw)
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):
        raw = raw[..., :3].max(axis=-1)
    return raw > 0


def read_image_folder(folder: str | os.PathLike) -> list[Volume]:
    """Read a folder (and its sub-folders) of 2D images with ``<name>_mask*.png`` masks (BUSI layout).

    Several masks of one image (``x_mask.png``, ``x_mask_1.png``) are unioned into label 1 (any value
    > 0 is foreground). Images without any mask get ``labels=None``. The sub-folder relative to
    ``folder`` is stored in ``metadata['category']`` ('' at the top level). Order: natural sort of
    (sub-folder, name).
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder; choose the folder that holds the images.")
    images: dict[tuple[str, str], Path] = {}
    masks: dict[tuple[str, str], list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        category = Path(dirpath).relative_to(root).as_posix()
        category = "" if category == "." else category
        for fname in filenames:
            p = Path(dirpath) / fname
            if fname.startswith(".") or p.suffix.lower() not in IMAGE_2D_EXTS + (".tif", ".tiff"):
                continue
            m = _MASK_RE.match(p.stem)
            if m:
                masks.setdefault((category, m["base"]), []).append(p)
            else:
                images[(category, p.stem)] = p
    if not images:
        raise DataError(f"Found no images (.png, .jpg, .bmp, .tif) in '{root}' or its sub-folders.")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        warnings.warn(f"{len(orphans)} mask(s) in '{root}' have no matching image, e.g. {orphans[0][1]}_mask.",
                      DataWarning, stacklevel=2)
    out = []
    for key in sorted(images, key=lambda k: (natural_key(k[0]), natural_key(k[1]))):
        vol = read_volume(images[key])
        vol.metadata["category"] = key[0]
        if key in masks:
            union = np.zeros(vol.shape, dtype=bool)
            for mp in sorted(masks[key], key=lambda q: natural_key(q.name)):
                m = _read_binary_mask(mp)
                if m.shape != vol.shape:
                    raise DataError(f"Mask '{mp.name}' has shape {m.shape} but its image has shape {vol.shape}.")
                union |= m
            vol.labels = union.astype(np.uint8)
            vol.metadata["mask_files"] = [str(q) for q in sorted(masks[key], key=lambda q: natural_key(q.name))]
        out.append(vol)
    return out


def read_list(root: Path, list_file: str) -> list[str]:
    """The slice or volume ids listed in an SSL4MIS list file (one a line), or a DataError that says what to fix."""
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder; point to the SSL4MIS dataset root (with data/ and *.list).")
    lf = Path(list_file) if Path(list_file).is_absolute() else root / list_file
    if not lf.is_file():
        raise DataError(f"The list file '{lf}' does not exist; expected e.g. train_slices.list or val.list "
                        f"in '{root}'.")
    try:
        ids = [line.strip() for line in lf.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"The list file '{lf}' cannot be read ({getattr(exc, 'strerror', None) or exc}); it must be a "
                        "readable text file with one id a line.") from exc
    if not ids:
        raise DataError(f"The list file '{lf}' is empty.")
    return ids


def _h5_pair(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Fast path for many small SSL4MIS files: no validation pass, no extra copies."""
    import h5py

    if not path.is_file():
        raise DataError(f"'{path}' listed in the SSL4MIS list file does not exist.")
    with reading(path, "SSL4MIS HDF5"), h5py.File(str(path), "r") as f:
        image = f["image"][()].astype(np.float32, copy=False)
        labels = f["label"][()] if "label" in f else None
    if labels is not None and labels.dtype != np.uint8:
        labels = coerce_labels(labels, f"'label' in {path.name}")
    return image, labels


def read_ssl4mis_slices(root: str | os.PathLike, list_file: str = "train_slices.list",
                        limit: int | None = None) -> list[Volume]:
    """2D slices listed in ``root/list_file`` (ids -> ``root/data/slices/<id>.h5``), in list order.

    ``metadata`` holds ``group`` (volume id, e.g. ``patient001_frame01``) and ``position`` (slice number).
    """
    root = Path(root)
    ids = read_list(root, list_file)[:limit]
    out = []
    for sid in ids:
        p = root / "data" / "slices" / f"{sid}.h5"
        image, labels = _h5_pair(p)
        group, _, pos = sid.rpartition("_slice_")
        meta = {"group": group or sid, "position": int(pos) if pos.isdigit() else 0}
        out.append(Volume(image, labels, None, None, name=sid, source=str(p), metadata=meta))
    return out


def read_ssl4mis_volumes(root: str | os.PathLike, list_file: str = "val.list") -> list[Volume]:
    """3D volumes listed in ``root/list_file`` (ids -> ``root/data/<id>.h5``), in list order."""
    root = Path(root)
    out = []
    for vid in read_list(root, list_file):
        p = root / "data" / f"{vid}.h5"
        image, labels = _h5_pair(p)
        out.append(Volume(image, labels, None, None, name=vid, source=str(p), metadata={"group": vid}))
    return out

