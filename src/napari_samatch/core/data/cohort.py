"""A cohort: a folder of volumes, an optional folder of label files matched by name, as training slices.

Members of ``--images DIR``: NIfTI, TIFF and SSL4MIS ``.h5`` files, and sub-folders holding one DICOM series
(``dicom.py``), directly in ``DIR`` (hidden files and other files are skipped). A member's name is its file
name without the extension (a DICOM series: its folder's name).

Labels: the file in ``--labels DIR`` with the same name (``patient7.nii.gz`` for ``patient7/`` or
``patient7.tif``), or with one of the suffixes in ``LABEL_SUFFIXES`` (``patient7_label.nii.gz``). The painted
slices of a label file (any non-zero voxel) are labeled; its other slices, and every slice of a volume without
a label file, are unlabeled, as for a single volume (``SliceSet.from_volume``). With ``labels_complete`` the
label files are declared complete ground truth: every slice of a volume with a label file is labeled, an
all-background one included (fully annotated volumes, e.g. ACDC's labeled cases). An ``.h5`` file's own
'label' dataset is kept as ``hidden`` (never trained on): it is ground truth, not a user's painting.

Order: volumes in natural name order, each volume's slices by position. The engine draws its batches by
position in this list, so with the same seed renamed files draw other slices (``benchmarks/_acdc_cohort.py``
names and stacks files so that this order is the SSL4MIS list's, and trains as that list).

Paintings: ``paintings`` maps a member's name to a label volume held in memory (the napari Cohort dock's
painted volumes, ``cohort_state.py``); it replaces that member's label file, so its painted slices are labeled.
A painting of a member whose label file is complete is complete too (it began as that file, corrected); a
painting of a member without a label file never is.

Memory: when every image and label file is NIfTI the slices are read from disk when used
(``lazy.nifti_slices``; use ``.nii`` rather than ``.nii.gz`` for large cohorts). Other formats are read
eagerly, one volume at a time, keeping only the normalised float32 slices.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import DataError, DataWarning
from .io import file_kind, file_stem, natural_key, read_label, read_volume, reading
from .slices import SliceSet, default_class_names, normalise_slice
from .volume import as_3d

COHORT_KINDS = ("nifti", "tiff", "h5", "dicom")
LABEL_SUFFIXES = ("", "_label", "_labels", "_mask", "_seg", "_gt")


@dataclass(frozen=True)
class Member:
    """One volume of a cohort: its name, image file (or DICOM folder) and label file (``None``: unlabeled)."""

    name: str
    image: Path
    labels: Path | None = None


def list_cohort(images: str | os.PathLike, labels: str | os.PathLike | None = None) -> list[Member]:
    """The volumes of ``images`` with their label files from ``labels``, in natural name order."""
    root = Path(images)
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder; --images takes a folder of volumes (NIfTI, TIFF, .h5, or one "
                        "sub-folder per DICOM series).")
    found: dict[str, Path] = {}
    for p in sorted(root.iterdir(), key=lambda q: natural_key(q.name)):
        if p.name.startswith(".") or file_kind(p) not in COHORT_KINDS:
            continue
        name = p.name if p.is_dir() else file_stem(p)
        if name in found:
            raise DataError(f"'{found[name].name}' and '{p.name}' in '{root}' have the same name '{name}', so "
                            "their masks and labels would collide; rename or remove one.")
        found[name] = p
    if not found:
        raise DataError(f"'{root}' holds no volumes (NIfTI, TIFF or .h5 files, or sub-folders with one DICOM "
                        "series each); check the folder.")
    label_files = _label_files(Path(labels), set(found)) if labels is not None else {}
    return [Member(name, path, label_files.get(name)) for name, path in found.items()]


def _label_files(root: Path, names: set[str]) -> dict[str, Path]:
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder; --labels takes the folder of label files named like the volumes "
                        "(e.g. patient7.nii.gz for patient7.nii.gz or patient7/).")
    out: dict[str, Path] = {}
    orphans = []
    for p in sorted(root.iterdir(), key=lambda q: natural_key(q.name)):
        if p.name.startswith(".") or not p.is_file() or file_kind(p) not in ("nifti", "tiff", "h5", "image2d"):
            continue
        stem = file_stem(p)
        name = next((stem[: len(stem) - len(s)] for s in LABEL_SUFFIXES
                     if stem.endswith(s) and stem[: len(stem) - len(s)] in names), None)
        if name is None:
            orphans.append(p.name)
            continue
        if name in out:
            raise DataError(f"'{out[name].name}' and '{p.name}' in '{root}' are both labels of '{name}'; keep one.")
        out[name] = p
    if orphans:
        warnings.warn(f"{len(orphans)} label file(s) in '{root}' match no volume by name and are not used, e.g. "
                      f"'{orphans[0]}'; name a label file like its volume (optionally with _label or _mask).",
                      DataWarning, stacklevel=3)
    return out


def volume_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """A member's shape in array order (as ``read_volume`` gives it), from the file's header where the format
    has one (NIfTI, TIFF, .h5); other members (DICOM series) are read whole."""
    path = Path(path)
    kind = file_kind(path)
    with reading(path, kind or "an image"):
        if kind == "nifti":
            from .lazy import nifti_image

            shape = tuple(int(s) for s in nifti_image(str(path)).shape)
            while len(shape) > 3 and shape[-1] == 1:  # (X, Y, Z, 1) is a volume, as read_volume reads it
                shape = shape[:-1]
            return shape[::-1]
        if kind == "h5":
            import h5py

            with h5py.File(str(path), "r") as f:
                if "image" in f:
                    return tuple(int(s) for s in f["image"].shape)
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                series = tif.series[0]
                if not series.axes.endswith("S"):  # colour TIFFs lose their channel axis when read
                    return tuple(int(s) for s in series.shape)
    return tuple(read_volume(path).shape)


def cohort_slices(members: Sequence[Member], axis: int = 0, class_names: Sequence[str] | None = None,
                  paintings: Mapping[str, np.ndarray] | None = None, *, labels_complete: bool = False) -> SliceSet:
    """Training slices of a cohort (see the module docstring); a ``DataError`` sentence when nothing is labeled.

    ``labels_complete``: every slice of a volume with a label file is labeled (background-only ones too), not
    only its painted slices; for fully annotated volumes. A painting of such a volume is complete too; a painting
    of a volume without a label file counts its painted slices only."""
    paintings = dict(paintings or {})
    if not any(m.labels is not None or m.name in paintings for m in members):
        raise DataError(f"None of the {len(members)} volumes has a label file, so no slice is labeled; give "
                        "--labels DIR with a file named like a volume in which a few slices are painted.")
    lazy = all(file_kind(m.image) == "nifti" and (m.labels is None or file_kind(m.labels) == "nifti")
               for m in members)
    return (_lazy if lazy else _eager)(members, axis, class_names, paintings, labels_complete)


def _lazy(members: Sequence[Member], axis: int, class_names: Sequence[str] | None,
          paintings: dict[str, np.ndarray], complete: bool) -> SliceSet:
    from .lazy import nifti_image, nifti_slices

    for m in members:  # headers only: a label on another grid would land on the wrong voxels
        if m.labels is not None and m.name not in paintings:
            with reading(m.labels, "NIfTI"):
                a, b = nifti_image(str(m.image)).affine, nifti_image(str(m.labels)).affine
            if not np.allclose(a, b, rtol=1e-4, atol=1e-3):
                raise DataError(f"The labels '{m.labels.name}' and the image '{m.image.name}' are on different grids "
                                "(NIfTI affines differ); re-export the labels on the image's grid.")
    files = [None if m.name in paintings else m.labels for m in members]
    data = nifti_slices([m.image for m in members], files, axis=axis, class_names=class_names,
                        num_classes=len(class_names) if class_names else None, check=not paintings,
                        complete=complete)
    if not paintings:
        return data
    for m in members:
        if m.name in paintings and tuple(np.shape(paintings[m.name])) != volume_shape(m.image):
            raise DataError(f"The labels painted on '{m.name}' have shape {np.shape(paintings[m.name])} but the "
                            f"image {volume_shape(m.image)}; paint on a labels layer of the image's shape.")
    whole = {m.name for m in members if complete and m.labels is not None}  # complete paintings
    top = 0
    for i, (group, z) in enumerate(zip(data.groups, data.positions)):
        if group in paintings:  # the painted slice itself, in memory, stands in for a label file's slice
            lab = np.take(paintings[group], z, axis=axis)
            if lab.any() or group in whole:
                data.labels.refs[i] = np.ascontiguousarray(lab)  # type: ignore[attr-defined]
                top = max(top, int(lab.max()))
    return _with_classes(data, top, class_names).validate()


def _with_classes(data: SliceSet, top: int, class_names: Sequence[str] | None) -> SliceSet:
    """The class count grown to the largest painted class (never shrunk below the files' or the names')."""
    n = max(data.num_classes, top + 1, len(class_names or ()), 2)
    if n != data.num_classes:
        names = list(data.class_names)
        data.num_classes, data.class_names = n, (names + default_class_names(n)[len(names):])[:n]
    return data


def _eager(members: Sequence[Member], axis: int, class_names: Sequence[str] | None,
           paintings: dict[str, np.ndarray], complete: bool) -> SliceSet:
    from .datasets import check_class_values  # datasets reads every source; imported here, not at the top
    images, labels, hidden, ids, groups, positions = [], [], [], [], [], []
    top = 0
    for m in members:
        vol = read_volume(m.image)
        truth = vol.labels  # an .h5 file's own labels: kept out of training
        if m.name in paintings:
            vol.labels = np.asarray(paintings[m.name])
            vol.validate()  # a painting of another shape: a sentence, not an IndexError
        else:
            vol.labels = read_label(m.labels, like=vol) if m.labels is not None else None
        ims, labs = vol.as_3d(axis)
        truths = None if truth is None else as_3d(truth, axis)
        if labs is not None:
            check_class_values(vol.labels, f"The labels '{m.labels}'" if m.name not in paintings
                               else f"The labels painted on '{m.name}'")
        if labs is None:
            painted: set[int] = set()
        elif complete and m.labels is not None:  # a complete label file (or its painting): empty slices are background
            painted = set(range(len(labs)))
        else:
            painted = set(vol.labeled_slices(axis).tolist())
        for z in range(len(ims)):
            images.append(normalise_slice(ims[z]))
            lab = np.ascontiguousarray(labs[z]) if z in painted else None
            if lab is not None:
                top = max(top, int(lab.max()))
            labels.append(lab)
            hidden.append(None if lab is not None or truths is None else np.ascontiguousarray(truths[z]))
            ids.append(f"{m.name}_slice_{z}")
            groups.append(m.name)
            positions.append(z)
        del vol, ims, labs, truth, truths
    names = list(class_names or [])
    num_classes = max(len(names), top + 1, 2)
    names = (names + default_class_names(num_classes)[len(names):])[:num_classes]
    return SliceSet(images, labels, hidden, ids, groups, positions, num_classes, names).validate()
