"""The training view of data: a flat list of 2D slices, some labeled, the rest unlabeled.

Images are per-slice min-max normalised to [0, 1] at their original size; ``to_tensors`` resamples
them to the square training frame. ``hidden`` holds ground truth that training never sees (benchmarks
use it to measure pseudo-label quality).

The three per-slice sequences are usually lists, but may be lazy (``core.data.lazy``: read from disk on
access, for cohorts larger than memory). Methods here never read every slice of a lazy sequence:
which slices have a label comes from ``present()``, shapes from ``shape_of(i)``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .volume import Volume

ACDC_CLASS_NAMES = ["background", "RV", "Myo", "LV"]


def normalise_slice(image: np.ndarray) -> np.ndarray:
    """Per-slice min-max to [0, 1] float32 (a constant slice becomes zeros)."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def default_class_names(num_classes: int) -> list[str]:
    return ["background"] + [f"class {c}" for c in range(1, num_classes)]


@dataclass
class SliceSet:
    """Parallel per-slice lists; see the module docstring. Build with the ``from_*`` constructors."""

    images: Sequence[np.ndarray]          # a list, or core.data.lazy.LazySlices
    labels: Sequence[np.ndarray | None]   # a list, or core.data.lazy.LazyLabels
    hidden: Sequence[np.ndarray | None]
    ids: list[str]
    groups: list[str]
    positions: list[int]
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.images)
        for name in ("labels", "hidden", "ids", "groups", "positions"):
            if len(getattr(self, name)) != n:
                raise DataError(f"SliceSet.{name} has {len(getattr(self, name))} entries for {n} images.")
        if not self.class_names:
            self.class_names = default_class_names(self.num_classes)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def is_lazy(self) -> bool:
        """True when the images are read from disk on access (``core.data.lazy``)."""
        return bool(getattr(self.images, "lazy", False))

    def labeled_indices(self) -> list[int]:
        return [i for i, has in enumerate(_present(self.labels)) if has]

    def unlabeled_indices(self) -> list[int]:
        return [i for i, has in enumerate(_present(self.labels)) if not has]

    def hidden_indices(self) -> list[int]:
        """Unlabeled slices with hidden ground truth (for a lazy ``hidden``: those that may have one)."""
        return [i for i, (lab, hid) in enumerate(zip(_present(self.labels), _present(self.hidden))) if hid and not lab]

    def image_shape(self, i: int) -> tuple[int, ...]:
        """(H, W) of slice ``i``; a lazy source answers from the file's header."""
        shape_of = getattr(self.images, "shape_of", None)
        return tuple(shape_of(i)) if shape_of is not None else tuple(self.images[i].shape)

    def subset(self, indices: Iterable[int]) -> SliceSet:
        ix = [int(i) for i in indices]
        return SliceSet(_take(self.images, ix), _take(self.labels, ix), _take(self.hidden, ix),
                        [self.ids[i] for i in ix], [self.groups[i] for i in ix], [self.positions[i] for i in ix],
                        self.num_classes, list(self.class_names))

    def validate(self) -> SliceSet:
        """Raise ``DataError`` when training cannot start: no labeled slice, or a class out of range."""
        if len(self) == 0:
            raise DataError("There are no slices to train on; open an image first.")
        if not self.labeled_indices():
            raise DataError(
                "No slice is labeled. Paint at least one slice of the labels layer (every class you want "
                "to segment, ideally on a few well-spread slices), then start again."
            )
        if self.num_classes < 2:
            raise DataError(f"At least 2 classes (background + one) are needed, got {self.num_classes}.")
        present: set[int] = set()  # the smallest and largest class over the labeled slices
        for kind, arrs in (("label", self.labels), ("hidden label", self.hidden)):
            if kind == "hidden label" and getattr(arrs, "lazy", False):
                continue  # lazy hidden labels: one per unlabeled slice, far too many to read; read when scored
            for i, has in enumerate(_present(arrs)):
                lab = arrs[i] if has else None
                if lab is None:
                    continue
                if kind == "label" and lab.size:
                    present.update((int(lab.min()), int(lab.max())))
                if lab.shape != self.image_shape(i):
                    raise DataError(f"The {kind} of slice {self.ids[i]} has shape {lab.shape} but its image "
                                    f"{self.image_shape(i)}; they must match.")
                if lab.size and int(lab.min()) < 0:
                    raise DataError(f"Slice {self.ids[i]} has a negative {kind}; use 0 for background, 1.. classes.")
                if lab.size and int(lab.max()) >= self.num_classes:
                    raise DataError(
                        f"Slice {self.ids[i]} has class {int(lab.max())} in its {kind} but only {self.num_classes} classes "
                        f"(0..{self.num_classes - 1}) are configured; add a class name or repaint it."
                    )
        if len(present) == 1 and 0 not in present:  # e.g. a whole slice filled with one class
            raise DataError(
                f"The labeled slices hold only class {present.pop()}, with no background (0); training needs at "
                "least two classes. Leave (or paint) background around the structure, or check that the right "
                "mask file was chosen."
            )
        return self

    # ------------------------------------------------------------------------------- tensors
    def to_tensors(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Resample every slice to ``size x size``.

        Images: bilinear; labels: nearest neighbour (like SSL4MIS's ``zoom(order=1)`` / ``zoom(order=0)``,
        here with pixel-centre aligned ``bilinear``/``nearest-exact`` interpolation). Returns
        ``images`` float32 (N, 1, S, S), ``labels`` int64 (N, S, S) with -1 on unlabeled slices, and
        ``labeled`` bool (N,).
        """
        # a lazy source is read once here (everything: only for data known to fit memory)
        images = resize_images(list(self.images) if self.is_lazy else self.images, size)
        labels = resize_label_list(list(self.labels) if getattr(self.labels, "lazy", False) else self.labels, size)
        labeled = torch.tensor(_present(self.labels), dtype=torch.bool)
        return images, labels, labeled

    def hidden_tensor(self, size: int) -> torch.Tensor:
        """Hidden ground truth as int64 (N, S, S), -1 where a slice has none."""
        return resize_label_list(self.hidden, size)

    # ------------------------------------------------------------------------------- builders
    @classmethod
    def from_volume(cls, volume: Volume, axis: int = 0, labeled: Sequence[int] | None = None,
                    num_classes: int | None = None, class_names: Sequence[str] | None = None) -> SliceSet:
        """Slices of one volume (the plugin's case): painted slices are labeled, the rest unlabeled.

        ``labeled`` overrides which slices count as labeled (a listed slice may be all background).
        """
        if volume.labels is None:
            raise DataError(f"'{volume.name}' has no labels layer. Paint at least one slice, then start again.")
        volume.validate()  # shapes, dtypes, NaN/Inf, negative labels: before normalising hides them
        images, labels = volume.as_3d(axis)
        chosen = sorted(set(int(i) for i in (volume.labeled_slices(axis) if labeled is None else labeled)))
        for i in chosen:
            if not 0 <= i < len(images):
                raise DataError(f"Slice {i} does not exist; '{volume.name}' has {len(images)} slices "
                                f"along axis {axis}.")
        names = list(class_names or volume.metadata.get("class_names") or [])
        if num_classes is None:
            top = max((int(labels[i].max()) for i in chosen), default=0)
            num_classes = max(len(names), top + 1, 2)
        names = names or default_class_names(num_classes)
        if len(names) != num_classes:
            names = (names + default_class_names(num_classes)[len(names):])[:num_classes]
        chosen_set = set(chosen)
        out = cls(
            images=[normalise_slice(im) for im in images],
            labels=[np.ascontiguousarray(labels[i]) if i in chosen_set else None for i in range(len(images))],
            hidden=[None] * len(images),
            ids=[f"{volume.name}_slice_{i}" for i in range(len(images))],
            groups=[volume.name] * len(images),
            positions=list(range(len(images))),
            num_classes=num_classes,
            class_names=names,
        )
        return out.validate()

    @classmethod
    def from_volumes(cls, volumes: Sequence[Volume], labeled_volumes: Iterable[int] | None = None, axis: int = 0,
                     num_classes: int | None = None, class_names: Sequence[str] | None = None) -> SliceSet:
        """Every slice of several fully labeled volumes or 2D images (e.g. BUSI, one slice each).

        Volumes whose index is in ``labeled_volumes`` (default: all that have labels) give labeled
        slices; the labels of the others go to ``hidden``.
        """
        keep = None if labeled_volumes is None else {int(i) for i in labeled_volumes}
        images, labels, hidden, ids, groups, positions = [], [], [], [], [], []
        top = 0
        for k, vol in enumerate(volumes):
            ims, labs = vol.validate().as_3d(axis)
            use = labs is not None and (keep is None or k in keep)
            for i in range(len(ims)):
                lab = None if labs is None else np.ascontiguousarray(labs[i])
                if lab is not None and lab.size:
                    top = max(top, int(lab.max()))
                images.append(normalise_slice(ims[i]))
                labels.append(lab if use else None)
                hidden.append(None if use else lab)
                ids.append(vol.name if len(ims) == 1 else f"{vol.name}_slice_{i}")
                groups.append(vol.name)
                positions.append(i)
        names = list(class_names or (volumes[0].metadata.get("class_names") if volumes else None) or [])
        num_classes = num_classes or max(len(names), top + 1, 2)
        names = names or default_class_names(num_classes)
        return cls(images, labels, hidden, ids, groups, positions, num_classes, names).validate()


def _present(seq: Sequence[Any]) -> list[bool]:
    """Which entries are not None; a lazy sequence knows without reading its files."""
    present = getattr(seq, "present", None)
    return present() if present is not None else [x is not None for x in seq]


def _take(seq: Sequence[Any], ix: list[int]) -> Sequence[Any]:
    if getattr(seq, "lazy", False):  # a lazy sequence stays lazy (not ndarray.take: that flattens)
        return seq.take(ix)  # type: ignore[attr-defined]
    return [seq[i] for i in ix]


# ----------------------------------------------------------------------------------- resampling
def _by_shape(arrays: Sequence[np.ndarray | None]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, a in enumerate(arrays):
        if a is not None:
            groups[a.shape].append(i)
    return groups


def resize_images(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """(N, 1, S, S) float32 from 2D arrays of any sizes, bilinear (slices of one size resized together)."""
    out = torch.zeros((len(images), 1, size, size), dtype=torch.float32)
    for shape, ix in _by_shape(images).items():
        # 16 slices at a time: a CT volume's stack at its own size would be another 300 MB at once (each
        # slice is resampled alone either way, so the values are the same)
        for part in (ix[s:s + 16] for s in range(0, len(ix), 16)):
            batch = torch.from_numpy(np.stack([images[i] for i in part]).astype(np.float32, copy=False))[:, None]
            out[part] = batch if shape == (size, size) else F.interpolate(batch, size=(size, size), mode="bilinear",
                                                                          align_corners=False)
    return out


def resize_label_list(labels: Sequence[np.ndarray | None], size: int) -> torch.Tensor:
    """(N, S, S) int64 nearest-neighbour resampled labels, -1 for ``None`` entries."""
    out = torch.full((len(labels), size, size), -1, dtype=torch.int64)
    for shape, ix in _by_shape(labels).items():
        batch = torch.from_numpy(np.stack([labels[i] for i in ix]).astype(np.int64))
        out[ix] = batch if shape == (size, size) else _nearest(batch, (size, size))
    return out


def _nearest(labels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # float32 holds class numbers exactly; 'nearest-exact' samples pixel centres like bilinear above.
    x = labels[:, None].to(torch.float32)
    return F.interpolate(x, size=shape, mode="nearest-exact")[:, 0].to(torch.int64)


def resize_labels_back(pred: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> np.ndarray | torch.Tensor:
    """Nearest-neighbour resize of a (S, S) or (N, S, S) label map to (H, W) / (N, H, W), same type back."""
    is_np = isinstance(pred, np.ndarray)
    t = torch.from_numpy(np.asarray(pred)) if is_np else pred
    squeeze = t.ndim == 2
    t = t[None] if squeeze else t
    if tuple(t.shape[-2:]) != tuple(shape):
        t = _nearest(t.to(torch.int64), tuple(shape)).to(t.dtype)
    t = t[0] if squeeze else t
    if is_np:
        return t.numpy().astype(np.asarray(pred).dtype, copy=False)
    return t
