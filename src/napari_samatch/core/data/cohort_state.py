"""A cohort open in napari: its members, what the table shows of each, and the volumes the user painted.

The napari Cohort dock shows one member at a time. Switching to another member must not lose what was painted
on the previous one, and the label files on disk are inputs that are never written. So the paintings live
here, in memory, and only for members whose labels the user changed (the others are read from their label
files when shown or trained on). Training uses ``cohort_slices`` with the paintings overriding label files.

``labels_complete`` declares the label files complete ground truth (``cohort_slices(labels_complete=True)``,
``train --labels-complete``): every slice of a member with a label file is labeled, background-only ones too.
A painting of such a member is complete too (it began as that file); a painting of a member without a label
file never is. The table's counts, the review list's left-out slices and the training data follow one rule.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .cohort import Member, cohort_slices, list_cohort, volume_shape
from .io import read_label, read_volume
from .slices import SliceSet
from .volume import Volume, as_3d, check_axis

NO_LABELS_FOLDER = ("Label files can only be complete with a labels folder; choose the folder of label files, or "
                    "leave the labels not complete.")


def painted_slices(labels: np.ndarray, axis: int = 0) -> list[int]:
    """The slices along ``axis`` holding any non-zero label."""
    if labels.ndim == 2:
        return [0] if labels.any() else []
    others = tuple(a for a in range(labels.ndim) if a != axis)
    return np.flatnonzero(labels.any(axis=others)).tolist()


@dataclass
class MemberRow:
    """What the cohort table shows of one member."""

    name: str
    shape: tuple[int, ...]
    labeled: int          # labeled slices along the cohort's axis (``CohortState.labeled``)
    painted_here: bool    # the user painted this member in napari (held in memory, not on disk)


class CohortState:
    """The members of a cohort and the label volumes painted on some of them (name -> array, in memory)."""

    def __init__(self, members: list[Member], images: str | os.PathLike, labels: str | os.PathLike | None = None,
                 axis: int = 0, labels_complete: bool = False) -> None:
        self.members = list(members)
        self.images, self.labels = Path(images), Path(labels) if labels is not None else None
        self.axis = axis
        self.labels_complete = False
        self.set_labels_complete(labels_complete)
        self.paintings: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        # painted slices and slice count of each label file, read once (either flag's count without a new read)
        self._file_labeled: dict[str, tuple[list[int], int]] = {}
        # the labels of the members last loaded, as loaded: what keep() compares with. Two, because the dock reads
        # the next member in a worker while the shown one may still be kept (an autosave, a Start).
        self._loaded: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, images: str | os.PathLike, labels: str | os.PathLike | None = None, axis: int = 0,
             labels_complete: bool = False) -> CohortState:
        """The cohort of a folder of volumes (and an optional folder of label files); a DataError sentence if bad."""
        if labels_complete and labels is None:
            raise DataError(NO_LABELS_FOLDER)
        return cls(list_cohort(images, labels), images, labels, axis, labels_complete)

    def set_labels_complete(self, complete: bool) -> None:
        """Declare the label files complete (or not); a DataError sentence when there is no labels folder."""
        if complete and self.labels is None:
            raise DataError(NO_LABELS_FOLDER)
        self.labels_complete = bool(complete)

    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise DataError(f"'{name}' is not a volume of the open cohort ({len(self.members)} volumes).")

    # ------------------------------------------------------------------ the table
    def shape(self, name: str) -> tuple[int, ...]:
        """The member's shape from its header (remembered)."""
        if name not in self._shapes:
            self._shapes[name] = volume_shape(self.member(name).image)
        return self._shapes[name]

    def labeled(self, name: str) -> list[int]:
        """The member's labeled slices, as ``cohort_slices`` labels them: all of them for a member with a label
        file when the label files are complete (its painting too: it began as that file); else the painted ones
        of its painting if painted here, else of its label file (read once); none without either."""
        m = self.member(name)
        if name in self.paintings:
            painting = self.paintings[name]
            whole = self.labels_complete and m.labels is not None
            return list(range(len(as_3d(painting, self.axis)))) if whole else painted_slices(painting, self.axis)
        if m.labels is None:
            return []
        if name not in self._file_labeled:
            lab = read_label(m.labels)
            self._file_labeled[name] = (painted_slices(lab, check_axis(self.axis, lab.ndim)),
                                        len(as_3d(lab, self.axis)))  # slices as cohort_slices counts them
        painted, count = self._file_labeled[name]
        return list(range(count)) if self.labels_complete else list(painted)

    def rows(self) -> list[MemberRow]:
        return [MemberRow(m.name, self.shape(m.name), len(self.labeled(m.name)), m.name in self.paintings)
                for m in self.members]

    # ------------------------------------------------------------------ showing and painting
    def load(self, name: str) -> Volume:
        """The member's volume with its labels: the painting if any, else its label file, else zeros (uint8)."""
        m = self.member(name)
        vol = read_volume(m.image)
        if name in self.paintings:
            labels = self.paintings[name].copy()
        elif m.labels is not None:
            labels = read_label(m.labels, like=vol)
        else:
            labels = np.zeros(vol.shape, np.uint8)
        vol.labels = labels
        self._shapes[name] = tuple(vol.shape)
        with self._lock:
            self._loaded[name] = labels.copy()
            self._loaded.move_to_end(name)
            while len(self._loaded) > 2:
                self._loaded.popitem(last=False)
        return vol

    def keep(self, name: str, labels: np.ndarray) -> bool:
        """Remember ``labels`` (a copy) as the member's painting when they differ from what it had; True if kept."""
        labels = np.asarray(labels)
        with self._lock:
            before = self.paintings.get(name, self._loaded.get(name))
        if before is None:
            before = self._file_labels(name)
        if before is not None and before.shape == labels.shape and np.array_equal(before, labels):
            return False
        if tuple(labels.shape) != self.shape(name):
            raise DataError(f"The labels of '{name}' have shape {labels.shape} but its image {self.shape(name)}; "
                            "paint on the labels layer the Cohort dock made for it.")
        self.paintings[name] = np.array(labels, copy=True)
        return True

    def _file_labels(self, name: str) -> np.ndarray:
        """The member's label file (its shape checked against the header), or zeros; the image is not read."""
        m = self.member(name)
        base = read_label(m.labels) if m.labels is not None else np.zeros(self.shape(name), np.uint8)
        if tuple(base.shape) != self.shape(name):
            raise DataError(f"The label file of '{name}' has shape {base.shape} but its image {self.shape(name)}.")
        return base

    def accept(self, name: str, index: int, slice_labels: np.ndarray, base: np.ndarray | None = None) -> bool:
        """Make slice ``index`` (along the cohort's axis) of the member's painting equal ``slice_labels`` (a reviewed
        prediction), so the next training round has it as a labeled slice. The painting starts from ``base`` (the
        shown labels layer: no file read) or the member's labels (painting, else label file, else zeros). True when
        the slice is now labeled: a slice holding no structure (all background) does not count as labeled, like an
        unpainted one."""
        if base is None:
            base = self.paintings.get(name)
        if base is None:
            base = self._file_labels(name)
        if tuple(base.shape) != self.shape(name):
            raise DataError(f"The labels of '{name}' have shape {base.shape} but its image {self.shape(name)}.")
        axis = check_axis(self.axis, base.ndim)
        if not 0 <= index < base.shape[axis]:
            raise DataError(f"'{name}' has {base.shape[axis]} slices along axis {axis}; there is no slice {index}.")
        painted = np.array(base, copy=True)  # a new array: snapshots of ``paintings`` taken before stay valid
        target = np.moveaxis(painted, axis, 0)[index]
        slice_labels = np.asarray(slice_labels)
        if slice_labels.shape != target.shape:
            raise DataError(f"The accepted slice has shape {slice_labels.shape}, a slice of '{name}' {target.shape}.")
        top = int(slice_labels.max()) if slice_labels.size else 0
        if painted.dtype.kind in "ui" and top > np.iinfo(painted.dtype).max:  # a class the painting's dtype lacks
            painted = painted.astype(np.promote_types(painted.dtype, np.min_scalar_type(top)))
            target = np.moveaxis(painted, axis, 0)[index]
        target[...] = slice_labels
        self.paintings[name] = painted
        return bool(target.any())

    # ------------------------------------------------------------------ the saved session
    def session_doc(self) -> dict[str, Any]:
        """The cohort as plain JSON (folders, axis, which members hold a painting); the paintings are arrays."""
        return {"images": str(self.images), "labels": str(self.labels) if self.labels is not None else None,
                "axis": int(self.axis), "labels_complete": bool(self.labels_complete), "painted": sorted(self.paintings)}

    @classmethod
    def from_session(cls, doc: dict[str, Any], paintings: dict[str, np.ndarray]) -> CohortState:
        """The cohort of a saved session, its paintings back in memory; a DataError sentence when the folder
        lost a painted volume or a painting no longer fits its volume (nothing painted is silently dropped). A
        session written before ``labels_complete`` existed opens with it off."""
        state = cls.open(doc["images"], doc.get("labels"), int(doc.get("axis", 0)),
                         labels_complete=bool(doc.get("labels_complete", False)))
        missing = sorted(set(paintings) - set(state.names()))
        if missing:
            raise DataError(f"The session holds paintings of {', '.join(missing)}, which are no longer in "
                            f"{state.images}. Put those volumes back, then open the session again.")
        for name, arr in paintings.items():
            if tuple(arr.shape) != state.shape(name):
                raise DataError(f"The session's painting of '{name}' has shape {arr.shape} but the volume now has "
                                f"{state.shape(name)}; was the file replaced? Put the original back.")
            state.paintings[name] = np.asarray(arr)
        return state

    # ------------------------------------------------------------------ training
    def check_labeled(self, paintings: dict[str, np.ndarray] | None = None) -> None:
        """A DataError sentence when no member has a label file or a painting: nothing to train on."""
        paintings = self.paintings if paintings is None else paintings
        if not paintings and not any(m.labels is not None for m in self.members):
            raise DataError(f"No slice of the {len(self.members)} volumes is labeled yet; click a volume, paint a few "
                            "of its slices, then start training.")

    def training_slices(self, class_names: list[str] | None = None) -> SliceSet:
        """Every slice of every member; the labeled ones (``labeled``: paintings over label files) are labeled."""
        self.check_labeled()
        return cohort_slices(self.members, self.axis, class_names or None, paintings=self.paintings,
                             labels_complete=self.labels_complete)
