"""Slices read from disk on demand: SliceSet sources for cohorts larger than memory.

:class:`LazySlices` stands in for the ``images`` list of a :class:`~.slices.SliceSet`: ``len()``,
and ``[i]`` returns the normalised float32 ``(H, W)`` slice read from its file at that moment
(``normalise_slice``, as the eager readers). :class:`LazyLabels` does the same for ``labels`` and
``hidden``; which slices *have* a label is known without reading pixels (``present()``), so the
labeled/unlabeled split costs nothing. Nothing is kept in memory: the engine's
:class:`~.store.SliceStore` keeps a bounded LRU of resized slices instead.

Readers, one slice per access:

* SSL4MIS HDF5: ``data/slices/<id>.h5`` (a 2D ``image``/``label`` per file) and ``data/<id>.h5``
  volumes (one ``[z]`` of the 3D dataset: h5py reads only that hyperslab). Files are opened and
  closed per read: a few hundred microseconds, and no handle outlives a read (safe with torchrun).
* NIfTI: nibabel's ``dataobj`` proxy reads one slice without loading the volume. ``.nii`` (uncompressed)
  seeks straight to the slice; ``.nii.gz`` must decompress everything before the slice on every read
  (about a volume's worth per slice near the end), so convert large cohorts to ``.nii`` first.

zarr is not supported (the package is not a dependency; the two readers above cover the CLI's sources).
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .io import file_kind, read_list, reading
from .slices import ACDC_CLASS_NAMES, SliceSet, default_class_names, normalise_slice
from .volume import coerce_labels, to_single_channel


@dataclass(frozen=True)
class SliceRef:
    """Where one 2D slice lives.

    ``kind`` is ``'h5'`` or ``'nifti'``; ``dataset`` the HDF5 dataset (``'image'``/``'label'``; unused for
    NIfTI); ``index`` the slice number along ``axis`` in array order (``None``: the file holds one 2D slice).
    """

    path: str
    kind: str
    dataset: str = "image"
    index: int | None = None
    axis: int = 0

    @property
    def name(self) -> str:
        where = Path(self.path).name
        return where if self.index is None else f"slice {self.index} of {where}"


# ----------------------------------------------------------------------------------- readers
def _take_axis(ndim: int, axis: int, index: int) -> tuple:
    return tuple(index if a == axis else slice(None) for a in range(ndim))


@lru_cache(maxsize=32)
def _nifti(path: str, mtime_ns: int) -> Any:
    """A nibabel image (header + array proxy, no voxels): parsing the header once per file, not per slice.
    ``mtime_ns`` is in the key so that a rewritten file is parsed again."""
    import nibabel as nib

    return nib.load(path)


def nifti_image(path: str) -> Any:
    return _nifti(path, os.stat(path).st_mtime_ns)


def _nifti_shape(img: Any) -> tuple[int, ...]:
    shape = tuple(img.shape)
    while len(shape) > 3 and shape[-1] == 1:  # (X, Y, Z, 1) is still a volume, as io.read_volume
        shape = shape[:-1]
    return shape


def read_raw(ref: SliceRef) -> np.ndarray | None:
    """The slice's stored values in array order (no normalisation); ``None`` when an h5 file lacks the dataset."""
    path = Path(ref.path)
    if not path.is_file():
        raise DataError(f"'{path}' does not exist (it was listed when the data was opened); check the path.")
    if ref.kind == "h5":
        import h5py

        with reading(path, "SSL4MIS HDF5"), h5py.File(ref.path, "r") as f:
            if ref.dataset not in f:
                return None
            d = f[ref.dataset]
            return d[()] if ref.index is None else d[_take_axis(d.ndim, ref.axis, ref.index)]
    with reading(path, "NIfTI"):
        img = nifti_image(ref.path)
        shape = _nifti_shape(img)
        if ref.index is None:
            return np.asarray(img.dataobj).reshape(shape).T
        # array axis a is NIfTI axis ndim-1-a (formats.py); trailing singleton axes are indexed at 0
        ix = _take_axis(len(shape), len(shape) - 1 - ref.axis, ref.index) + (0,) * (len(img.shape) - len(shape))
        return np.asarray(img.dataobj[ix]).T


def slice_shape(ref: SliceRef) -> tuple[int, int]:
    """The slice's (H, W) from the file's header, without reading voxels."""
    if ref.kind == "h5":
        import h5py

        with reading(Path(ref.path), "SSL4MIS HDF5"), h5py.File(ref.path, "r") as f:
            shape = tuple(f[ref.dataset].shape)
    else:
        with reading(Path(ref.path), "NIfTI"):
            shape = _nifti_shape(nifti_image(ref.path))[::-1]  # array order
    if ref.index is not None:
        shape = shape[:ref.axis] + shape[ref.axis + 1:]
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def read_image(ref: SliceRef) -> np.ndarray:
    """Normalised float32 (H, W), exactly what the eager readers put in ``SliceSet.images``."""
    raw = read_raw(ref)
    if raw is None:
        raise DataError(f"'{ref.path}' has no '{ref.dataset}' dataset; expected the SSL4MIS layout.")
    image = to_single_channel(raw, rgb=False, who=f"The image in {ref.name}")
    if image.ndim != 2:
        raise DataError(f"{ref.name} has shape {image.shape}; a 2D slice was expected.")
    if not np.isfinite(np.sum(image, dtype=np.float64)):  # checked per slice: the volume is never read whole
        raise DataError(f"{ref.name} holds NaN or Inf values; replace them (e.g. np.nan_to_num) and open it again.")
    return np.ascontiguousarray(normalise_slice(image))


def read_label(ref: SliceRef) -> np.ndarray | None:
    """The slice's labels as an unsigned integer array (``coerce_labels``); ``None`` when the h5 file has none."""
    raw = read_raw(ref)
    return None if raw is None else np.ascontiguousarray(coerce_labels(raw, f"label of {ref.name}"))


# ----------------------------------------------------------------------------------- sequences
class _LazySequence(Sequence):
    lazy = True  # SliceSet and the engine ask for this instead of isinstance (no import cycle)

    def __init__(self, refs: Iterable[SliceRef | None]) -> None:
        self.refs: list[SliceRef | None] = list(refs)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int | slice) -> Any:  # type: ignore[override]
        if isinstance(i, slice):
            return self.take(range(len(self))[i])
        return self._read(self.refs[i])

    @abstractmethod
    def _read(self, ref: SliceRef | None) -> Any:
        """One slice's array from its reference (each kind of sequence reads its own way)."""

    def take(self, indices: Iterable[int]) -> "_LazySequence":
        """The sub-sequence at ``indices``, still lazy."""
        out = type(self).__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.refs = [self.refs[int(i)] for i in indices]
        return out

    def __add__(self, other: Any) -> "_LazySequence":
        if type(other) is not type(self):
            return NotImplemented
        return type(self)(self.refs + other.refs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} slices)"


class LazySlices(_LazySequence):
    """Images read on access; ``shape_of(i)`` reads only the header (and remembers it)."""

    def __init__(self, refs: Iterable[SliceRef], shapes: dict[SliceRef, tuple[int, int]] | None = None) -> None:
        super().__init__(refs)
        self._shapes: dict[SliceRef, tuple[int, int]] = dict(shapes or {})

    def _read(self, ref: SliceRef | None) -> np.ndarray:
        image = read_image(ref)
        self._shapes[ref] = image.shape  # type: ignore[index]
        return image

    def shape_of(self, i: int) -> tuple[int, int]:
        ref = self.refs[i]
        if ref not in self._shapes:
            self._shapes[ref] = slice_shape(ref)
        return self._shapes[ref]

    def __add__(self, other: Any) -> "LazySlices":
        if not isinstance(other, LazySlices):
            return NotImplemented
        return LazySlices(self.refs + other.refs, {**self._shapes, **other._shapes})


class LazyLabels(_LazySequence):
    """Labels read on access; a ``None`` ref is a slice without one (``present()`` needs no file access).

    A ref may also be a 2D array: a slice painted in napari and held in memory, standing in for the file's.
    """

    def _read(self, ref: SliceRef | np.ndarray | None) -> np.ndarray | None:
        if ref is None or isinstance(ref, np.ndarray):
            return ref
        return read_label(ref)

    def present(self) -> list[bool]:
        return [r is not None for r in self.refs]


# ----------------------------------------------------------------------------------- builders
def _ssl4mis_group(sid: str) -> tuple[str, int]:
    group, _, pos = sid.rpartition("_slice_")
    return group or sid, int(pos) if pos.isdigit() else 0


def ssl4mis_slices(root: str | os.PathLike, labeled_count: int = 68, list_file: str = "train_slices.list",
                   limit: int | None = None) -> SliceSet:
    """The lazy twin of ``datasets.ssl4mis_slices``: same slices, ids, split and values, read on access.

    Only the first ``labeled_count`` files are opened here (to check they hold a 'label', as the eager
    reader does); the rest are only checked to exist.
    """
    import h5py

    root = Path(root)
    ids = read_list(root, list_file)[:limit]
    if not 0 < labeled_count <= len(ids):
        raise DataError(f"labeled_count must be between 1 and {len(ids)} (the listed slices), got {labeled_count}.")
    paths = [root / "data" / "slices" / f"{sid}.h5" for sid in ids]
    for p in paths:
        if not p.is_file():
            raise DataError(f"'{p}' listed in the SSL4MIS list file does not exist.")
    refs = [SliceRef(str(p), "h5") for p in paths]
    labels: list[SliceRef | None] = [None] * len(ids)
    hidden: list[SliceRef | None] = [None] * len(ids)
    shapes: dict[SliceRef, tuple[int, int]] = {}
    for i, p in enumerate(paths[:labeled_count]):
        with reading(p, "SSL4MIS HDF5"), h5py.File(str(p), "r") as f:
            shapes[refs[i]] = tuple(f["image"].shape)  # type: ignore[assignment]
            has_label = "label" in f
        labels[i] = SliceRef(str(p), "h5", "label") if has_label else None
    for i in range(labeled_count, len(ids)):  # a file without 'label' reads as None when asked
        hidden[i] = SliceRef(str(paths[i]), "h5", "label")
    where = [_ssl4mis_group(sid) for sid in ids]
    return SliceSet(images=LazySlices(refs, shapes), labels=LazyLabels(labels), hidden=LazyLabels(hidden),
                    ids=list(ids), groups=[g for g, _ in where], positions=[z for _, z in where],
                    num_classes=4, class_names=list(ACDC_CLASS_NAMES)).validate()


def ssl4mis_volume_slices(root: str | os.PathLike, list_file: str = "val.list", num_classes: int = 4,
                          class_names: Sequence[str] = ACDC_CLASS_NAMES) -> SliceSet:
    """Every slice of the 3D ``data/<id>.h5`` volumes in ``list_file``, fully labeled (validation), lazily;
    the lazy twin of ``datasets.slices_from_volumes(read_ssl4mis_volumes(...))``. Opens each header once."""
    import h5py

    root = Path(root)
    images: list[SliceRef] = []
    labels: list[SliceRef | None] = []
    ids, groups, positions = [], [], []
    shapes: dict[SliceRef, tuple[int, int]] = {}
    for vid in read_list(root, list_file):
        p = root / "data" / f"{vid}.h5"
        if not p.is_file():
            raise DataError(f"'{p}' listed in the SSL4MIS list file does not exist.")
        with reading(p, "SSL4MIS HDF5"), h5py.File(str(p), "r") as f:
            shape = tuple(f["image"].shape)
            has_label = "label" in f
        if len(shape) == 2:  # a 2D "volume": one slice
            shape = (1, *shape)
        for z in range(shape[0]):
            ref = SliceRef(str(p), "h5", "image", z if len(shape) == 3 else None)
            shapes[ref] = shape[1:]  # type: ignore[assignment]
            images.append(ref)
            labels.append(SliceRef(str(p), "h5", "label", ref.index) if has_label else None)
            ids.append(f"{vid}_slice_{z}")
            groups.append(vid)
            positions.append(z)
    return SliceSet(LazySlices(images, shapes), LazyLabels(labels), LazyLabels([None] * len(images)), ids, groups,
                    positions, num_classes, list(class_names))


def nifti_slices(images: Sequence[str | os.PathLike], labels: Sequence[str | os.PathLike | None] | None = None,
                 labeled_volumes: Iterable[int] | None = None, axis: int = 0, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, check: bool = True, complete: bool = False) -> SliceSet:
    """Slices of a cohort of NIfTI volumes, read one slice at a time.

    For a volume in ``labeled_volumes`` (default: every volume with a label file) the slices painted in
    its label file (any non-zero voxel) are labeled and the others unlabeled, as ``SliceSet.from_volume``
    does for one volume; each such label file is read once here to find them (labels are small). The label
    files of the other volumes become ``hidden`` (never read for training). ``num_classes`` defaults to the
    largest class painted + 1. ``check=False`` leaves ``validate()`` to the caller (who adds labels first).
    ``complete``: the label files are complete ground truth, so every slice of a labeled volume is labeled.
    """
    labels = list(labels) if labels is not None else [None] * len(images)
    if len(labels) != len(images):
        raise DataError(f"{len(images)} images but {len(labels)} label files; give one per image (or None).")
    keep = None if labeled_volumes is None else {int(i) for i in labeled_volumes}
    img_refs: list[SliceRef] = []
    lab_refs: list[SliceRef | None] = []
    hid_refs: list[SliceRef | None] = []
    ids, groups, positions = [], [], []
    shapes: dict[SliceRef, tuple[int, int]] = {}
    top = 0
    for k, (ip, lp) in enumerate(zip(images, labels)):
        ip = Path(ip)
        if file_kind(ip) != "nifti" or not ip.is_file():
            raise DataError(f"'{ip}' is not an existing NIfTI file (.nii or .nii.gz).")
        with reading(ip, "NIfTI"):
            shape = _nifti_shape(nifti_image(str(ip)))[::-1]  # array order
        if len(shape) != 3:
            raise DataError(f"'{ip.name}' has shape {shape}; a 3D volume is expected.")
        if not -3 <= axis < 3:
            raise DataError(f"axis {axis} does not exist in a 3D volume.")
        ax = axis % 3
        plane = shape[:ax] + shape[ax + 1:]
        painted: set[int] = set()
        use = lp is not None and (keep is None or k in keep)
        if lp is not None:
            lp = Path(lp)
            if file_kind(lp) != "nifti" or not lp.is_file():
                raise DataError(f"'{lp}' is not an existing NIfTI file (.nii or .nii.gz).")
            with reading(lp, "NIfTI"):
                lshape = _nifti_shape(nifti_image(str(lp)))[::-1]
            if lshape != shape:
                raise DataError(f"The labels '{lp.name}' have shape {lshape} but the image '{ip.name}' {shape}; "
                                "pick the label file that belongs to this image.")
            if use:  # one read of the (small, integer) label volume to find the painted slices
                whole = coerce_labels(read_raw(SliceRef(str(lp), "nifti")), f"labels in '{lp.name}'")
                others = tuple(a for a in range(3) if a != ax)
                painted = set(range(shape[ax]) if complete else np.flatnonzero(whole.any(axis=others)).tolist())
                top = max(top, int(whole.max()) if whole.size else 0)
                del whole
        name = Path(str(ip)[: -len(".gz")] if str(ip).endswith(".gz") else ip).stem
        for z in range(shape[ax]):
            ref = SliceRef(str(ip), "nifti", index=z, axis=ax)
            shapes[ref] = plane  # type: ignore[assignment]
            img_refs.append(ref)
            lref = None if lp is None else SliceRef(str(lp), "nifti", index=z, axis=ax)
            lab_refs.append(lref if use and z in painted else None)
            hid_refs.append(lref if not use else None)
            ids.append(f"{name}_slice_{z}")
            groups.append(name)
            positions.append(z)
    names = list(class_names or [])
    num_classes = num_classes or max(len(names), top + 1, 2)
    names = (names + default_class_names(num_classes)[len(names):])[:num_classes]
    data = SliceSet(LazySlices(img_refs, shapes), LazyLabels(lab_refs), LazyLabels(hid_refs), ids, groups,
                    positions, num_classes, names)
    return data.validate() if check else data


def ssl4mis_footprint_mb(root: str | os.PathLike, list_file: str = "train_slices.list",
                         limit: int | None = None) -> float:
    """Estimated memory (MB) of an eager ``datasets.ssl4mis_slices``: listed slices x the first slice's float32 size."""
    root = Path(root)
    ids = read_list(root, list_file)[:limit]
    h, w = slice_shape(SliceRef(str(root / "data" / "slices" / f"{ids[0]}.h5"), "h5"))
    return len(ids) * h * w * 4 / 2**20
