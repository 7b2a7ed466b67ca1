"""A cohort open in napari: its members, what the table shows of each, and the volumes the user painted.

The napari Cohort dock shows one member at a time. Switching to another member must not lose what was painted
on the previous one, and the label files on disk are inputs that are never written. So the paintings live
here, in memory, and only for members whose labels the user changed (the others are read from their label
files when shown or trained on). Training uses ``cohort_slices`` with the paintings overriding label files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .cohort import Member, cohort_slices, list_cohort, volume_shape
from .io import read_label, read_volume
from .slices import SliceSet
from .volume import Volume, check_axis


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
    labeled: int          # painted slices along the cohort's axis (the user's painting, else the label file)
    painted_here: bool    # the user painted this member in napari (held in memory, not on disk)


class CohortState:
    """The members of a cohort and the label volumes painted on some of them (name -> array, in memory)."""

    def __init__(self, members: list[Member], images: str | os.PathLike, labels: str | os.PathLike | None = None,
                 axis: int = 0) -> None:
        self.members = list(members)
        self.images, self.labels = Path(images), Path(labels) if labels is not None else None
        self.axis = axis
        self.paintings: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._file_labeled: dict[str, list[int]] = {}  # painted slices of each label file, read once
        self._shown: tuple[str, np.ndarray] | None = None  # the labels of the member last loaded, as loaded

    @classmethod
    def open(cls, images: str | os.PathLike, labels: str | os.PathLike | None = None, axis: int = 0) -> CohortState:
        """The cohort of a folder of volumes (and an optional folder of label files); a DataError sentence if bad."""
        return cls(list_cohort(images, labels), images, labels, axis)

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
        """The member's labeled slices: its painting's if painted here, else its label file's (read once)."""
        if name in self.paintings:
            return painted_slices(self.paintings[name], self.axis)
        m = self.member(name)
        if m.labels is None:
            return []
        if name not in self._file_labeled:
            lab = read_label(m.labels)
            self._file_labeled[name] = painted_slices(lab, check_axis(self.axis, lab.ndim))
        return list(self._file_labeled[name])

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
        self._shown = (name, labels.copy())
        return vol

    def keep(self, name: str, labels: np.ndarray) -> bool:
        """Remember ``labels`` (a copy) as the member's painting when they differ from what it had; True if kept."""
        labels = np.asarray(labels)
        if name in self.paintings:
            before = self.paintings[name]
        elif self._shown is not None and self._shown[0] == name:
            before = self._shown[1]
        else:
            before = self.load(name).labels
        if before is not None and before.shape == labels.shape and np.array_equal(before, labels):
            return False
        if tuple(labels.shape) != self.shape(name):
            raise DataError(f"The labels of '{name}' have shape {labels.shape} but its image {self.shape(name)}; "
                            "paint on the labels layer the Cohort dock made for it.")
        self.paintings[name] = np.array(labels, copy=True)
        return True

    # ------------------------------------------------------------------ training
    def check_labeled(self, paintings: dict[str, np.ndarray] | None = None) -> None:
        """A DataError sentence when no member has a label file or a painting: nothing to train on."""
        paintings = self.paintings if paintings is None else paintings
        if not paintings and not any(m.labels is not None for m in self.members):
            raise DataError(f"No slice of the {len(self.members)} volumes is labeled yet; click a volume, paint a few "
                            "of its slices, then start training.")

    def training_slices(self, class_names: list[str] | None = None) -> SliceSet:
        """Every slice of every member; the painted slices (paintings over label files) are labeled."""
        self.check_labeled()
        return cohort_slices(self.members, self.axis, class_names or None, paintings=self.paintings)
