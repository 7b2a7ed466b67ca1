"""DICOM: a folder holding one series (classic single-frame files) becomes one ``Volume``; a ``.dcm`` file, one image.

Order: slices are sorted by their position along the slice normal (``ImagePositionPatient`` projected on
the cross product of the two ``ImageOrientationPatient`` directions), so file names and file order do not
matter. Without positions, ``InstanceNumber`` orders them and the geometry is unknown (``affine`` ``None``).

Geometry, in the ``Volume`` conventions (array ``(Z, Y, X)`` = (slice, row, column), see ``formats.py``):

* ``spacing`` = (distance between slice positions, ``PixelSpacing[0]`` (between rows), ``PixelSpacing[1]``).
* ``affine`` maps array voxels to the NIfTI world frame (RAS+), as the NIfTI reader's does: DICOM's patient
  frame is LPS, so its first two rows are negated. A mask written as NIfTI ``like`` a DICOM volume therefore
  lands where a dcm2niix conversion of the same series would put the image.

Values: ``RescaleSlope``/``RescaleIntercept`` are applied per slice (CT in Hounsfield units), as float32.

Which files count: hidden files, ``DICOMDIR`` and files whose extension says they are something else
(``.txt``, ``.json``, ``.xml``, ``.png``, ...; see ``IGNORED_SUFFIXES``) are skipped, since scanners and
archives put notes and thumbnails next to a series. Any other file must be a DICOM image: a stray file,
a DICOM object without pixels (a report, a presentation state) or a second series is refused with a
sentence, never silently left out, because a left-out slice would shift the volume's geometry.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .volume import Volume, to_single_channel

IGNORED_NAMES = {"dicomdir", "thumbs.db", "desktop.ini"}
IGNORED_SUFFIXES = {".txt", ".md", ".json", ".xml", ".csv", ".html", ".htm", ".pdf", ".log", ".ini", ".nfo",
                    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".zip", ".py", ".sh", ".bat", ".exe"}
# Two slice positions may differ from the median step by this fraction before the series counts as uneven.
STEP_TOLERANCE = 0.1


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (``DICM`` after a 128-byte preamble), or is named ``.dcm``."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _candidates(folder: Path) -> list[Path]:
    """The files of ``folder`` that must be DICOM images (not hidden, not DICOMDIR, not notes or thumbnails)."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.name.lower() in IGNORED_NAMES:
            continue
        if p.suffix.lower() in IGNORED_SUFFIXES:
            continue
        out.append(p)
    return out


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder that holds at least one DICOM file directly (not only in sub-folders)."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    try:
        return any(is_dicom_file(p) for p in _candidates(folder))
    except OSError:
        return False


def _read_header(path: Path, folder: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise DataError(f"'{path.name}' in the series folder '{folder}' is not a DICOM file; move it out of the "
                        "folder (notes and thumbnails such as .txt or .png files are skipped on their own).") from exc
    if "Rows" not in ds or "Columns" not in ds:
        what = getattr(ds, "Modality", "") or "object"
        raise DataError(f"'{path.name}' in '{folder}' is a DICOM {what} object without an image (e.g. a report or a "
                        "presentation state); move it out of the series folder.")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise DataError(f"'{path.name}' is a multi-frame (enhanced) DICOM file, which is not supported; convert "
                        "the series to NIfTI (e.g. with dcm2niix) and open that.")
    return ds


def _pixels(path: Path, ds) -> np.ndarray:
    """The slice's values with RescaleSlope/Intercept applied, float32 ``(rows, columns)``."""
    import pydicom

    full = pydicom.dcmread(str(path))
    try:
        raw = full.pixel_array
    except (NotImplementedError, RuntimeError, ImportError) as exc:
        syntax = getattr(getattr(full, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown"
        raise DataError(f"The pixels of '{path.name}' are stored as '{name}', which cannot be decoded here "
                        f"({exc}); install pylibjpeg (pip install pylibjpeg pylibjpeg-libjpeg) or convert the "
                        "series to NIfTI (e.g. with dcm2niix).") from exc
    image = to_single_channel(raw, rgb=int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1, who=f"'{path.name}'")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0 or intercept != 0.0:  # float64 for the arithmetic: 16-bit values times a slope stay exact
        image = (image.astype(np.float64) * slope + intercept).astype(np.float32)
    return image


def _floats(ds, key: str, n: int) -> np.ndarray | None:
    value = getattr(ds, key, None)
    if value is None:
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def read_dicom_file(path: str | os.PathLike) -> Volume:
    """One single-frame DICOM image as a 2D ``Volume`` (in-plane spacing from ``PixelSpacing``; no affine)."""
    path = Path(path)
    ds = _read_header(path, path.parent)
    spacing = _floats(ds, "PixelSpacing", 2)
    return Volume(_pixels(path, ds), None, None if spacing is None else tuple(spacing), None, name=path.stem,
                  source=str(path), metadata={"dicom_series": str(getattr(ds, "SeriesInstanceUID", ""))})


def read_dicom_series(folder: str | os.PathLike) -> Volume:
    """The one series in ``folder`` as a ``(Z, rows, columns)`` float32 ``Volume``; ``DataError`` when it is not one."""
    folder = Path(folder)
    files = _candidates(folder)
    if not any(is_dicom_file(p) for p in files):
        sub = [d.name for d in sorted(folder.iterdir()) if d.is_dir() and is_dicom_folder(d)] if folder.is_dir() else []
        hint = (f" it has {len(sub)} sub-folder(s) with DICOM files (e.g. '{sub[0]}'): open one of them, or give "
                "the folder to train --images as a cohort." if sub else " give a folder that holds one series.")
        raise DataError(f"'{folder}' holds no DICOM files;{hint}")
    headers = [(p, _read_header(p, folder)) for p in files]
    _check_one_series(folder, headers)
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        (a, sa), (b, sb) = _first_two_differing(headers, lambda ds: (int(ds.Rows), int(ds.Columns)))
        raise DataError(f"The slices in '{folder}' have different sizes ({sa[0]}x{sa[1]} in '{a.name}', "
                        f"{sb[0]}x{sb[1]} in '{b.name}'), so they are not one series; keep one series per folder.")
    order, step, affine = _geometry(folder, headers)
    headers = [headers[i] for i in order]
    image = np.stack([_pixels(p, ds) for p, ds in headers])
    first = headers[0][1]
    pixel = _floats(first, "PixelSpacing", 2)
    spacing = None if pixel is None or step is None else (float(step), float(pixel[0]), float(pixel[1]))
    meta = {"dicom_series": str(getattr(first, "SeriesInstanceUID", "")),
            "dicom_files": [str(p) for p, _ in headers],
            "nifti_codes": (1, 1) if affine is not None else (0, 0)}  # scanner frame, as dcm2niix writes
    return Volume(image, None, spacing, affine, name=folder.name, source=str(folder), metadata=meta)


def _first_two_differing(headers, key):
    first = headers[0]
    other = next(h for h in headers if key(h[1]) != key(first[1]))
    return (first[0], key(first[1])), (other[0], key(other[1]))


def _check_one_series(folder: Path, headers) -> None:
    uids = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers} - {""}
    if len(uids) > 1:
        raise DataError(f"'{folder}' holds {len(uids)} DICOM series (different SeriesInstanceUID); put each series "
                        "in its own folder and open one at a time.")


def _geometry(folder: Path, headers) -> tuple[list[int], float | None, np.ndarray | None]:
    """Slice order, slice step (mm) and RAS affine from positions; InstanceNumber order when positions are missing."""
    n = len(headers)
    orients = [_floats(ds, "ImageOrientationPatient", 6) for _, ds in headers]
    positions = [_floats(ds, "ImagePositionPatient", 3) for _, ds in headers]
    if any(o is None for o in orients) or any(p is None for p in positions):
        return _by_instance_number(folder, headers), _thickness(headers[0][1]), None
    if any(not np.allclose(o, orients[0], atol=1e-3) for o in orients):
        raise DataError(f"The slices in '{folder}' have different orientations (ImageOrientationPatient), so they "
                        "are not one stack of parallel slices; keep one series per folder.")
    row, col = orients[0][:3], orients[0][3:]
    normal = np.cross(row, col)
    dist = np.array([float(np.dot(p, normal)) for p in positions])
    order = [int(i) for i in np.argsort(dist, kind="stable")]
    d = dist[order]
    if n > 1 and np.min(np.diff(d)) < 1e-3:
        k = int(np.argmin(np.diff(d)))
        raise DataError(f"'{headers[order[k]][0].name}' and '{headers[order[k + 1]][0].name}' in '{folder}' lie at the "
                        "same position, so the folder holds several time points, echoes or series; keep one volume per "
                        "folder.")
    if n > 2:
        _check_even(folder, d, [headers[i][0].name for i in order])
    step = float(np.median(np.diff(d))) if n > 1 else _thickness(headers[0][1])
    pixel = _floats(headers[order[0]][1], "PixelSpacing", 2)
    if pixel is None or step is None:
        return order, step, None
    lps = np.eye(4)
    lps[:3, 0] = normal * step  # array axis 0: slice; 1: row (down the column direction); 2: column
    lps[:3, 1] = col * pixel[0]
    lps[:3, 2] = row * pixel[1]
    lps[:3, 3] = positions[order[0]]
    if n > 1:  # the measured step vector, not the ideal normal, in case the stack is sheared (gantry tilt)
        lps[:3, 0] = (positions[order[-1]] - positions[order[0]]) / (n - 1)
    return order, step, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS, the NIfTI world frame


def _check_even(folder: Path, d: np.ndarray, names: list[str]) -> None:
    """The smallest step is the series' own (a missing slice only widens steps); any step wider than it is a
    gap of whole slices (missing files) or an uneven stack."""
    gaps = np.diff(d)
    ref = float(np.min(gaps))
    k = int(np.argmax(gaps))
    if gaps[k] <= (1 + STEP_TOLERANCE) * ref:
        return
    if gaps[k] >= 1.5 * ref:
        missing = max(int(round(gaps[k] / ref)) - 1, 1)
        raise DataError(f"The series in '{folder}' misses {missing} slice(s) between '{names[k]}' and "
                        f"'{names[k + 1]}' ({gaps[k]:.3g} mm apart where the others are {ref:.3g} mm); copy the "
                        "missing files into the folder, or export the series again.")
    raise DataError(f"The slices in '{folder}' are unevenly spaced ('{names[k]}' and '{names[k + 1]}' are "
                    f"{gaps[k]:.3g} mm apart, others {ref:.3g} mm), so they do not form one regular volume; "
                    "export the series again or resample it (e.g. to NIfTI).")


def _thickness(ds) -> float | None:
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(getattr(ds, key, None))
        except (TypeError, ValueError):
            continue
        if np.isfinite(value) and value > 0:
            return value
    return None


def _by_instance_number(folder: Path, headers) -> list[int]:
    numbers = [getattr(ds, "InstanceNumber", None) for _, ds in headers]
    if len(headers) > 1 and (any(v is None for v in numbers) or len({int(v) for v in numbers}) != len(numbers)):
        raise DataError(f"The slices in '{folder}' have no ImagePositionPatient and no distinct InstanceNumber, so "
                        "their order is unknown; export the series again with its position tags.")
    return [int(i) for i in np.argsort([int(v) if v is not None else 0 for v in numbers], kind="stable")]
