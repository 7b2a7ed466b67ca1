"""Where training data comes from: an SSL4MIS directory, a sparsely labeled volume, or an image folder.

Each source becomes a :class:`SliceSet` for training and, when it has one, a validation SliceSet of
fully labeled volumes (for model selection during the run).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import MAX_CLASSES
from ..errors import ConfigError, DataError
from .io import read_image_folder, read_label, read_ssl4mis_slices, read_ssl4mis_volumes, read_volume
from .lazy import nifti_slices, ssl4mis_footprint_mb, ssl4mis_volume_slices
from .lazy import ssl4mis_slices as lazy_ssl4mis_slices
from .sample import make_cardiac_phantom, sample_labeled_slices
from .slices import ACDC_CLASS_NAMES, SliceSet, default_class_names, normalise_slice
from .volume import Volume


def slices_from_volumes(volumes: Sequence[Volume], num_classes: int, class_names: Sequence[str],
                        as_hidden: bool = False) -> SliceSet:
    """Every slice (axis 0) of fully labeled volumes; ``as_hidden`` keeps the labels out of training."""
    images, labels, hidden, ids, groups, positions = [], [], [], [], [], []
    for vol in volumes:
        image = vol.image if vol.image.ndim == 3 else vol.image[None]
        label = None if vol.labels is None else (vol.labels if vol.labels.ndim == 3 else vol.labels[None])
        for z in range(image.shape[0]):
            images.append(normalise_slice(image[z]))
            lab = None if label is None else label[z].astype(np.uint8)
            labels.append(None if as_hidden else lab)
            hidden.append(lab if as_hidden else None)
            ids.append(f"{vol.name}_slice_{z}")
            groups.append(vol.name)
            positions.append(z)
    return SliceSet(images=images, labels=labels, hidden=hidden, ids=ids, groups=groups, positions=positions,
                    num_classes=num_classes, class_names=list(class_names))


def ssl4mis_slices(root: str | os.PathLike, labeled_count: int = 68, list_file: str = "train_slices.list",
                   limit: int | None = None, lazy: bool = False) -> SliceSet:
    """ACDC in the SSL4MIS layout: the first ``labeled_count`` listed slices are labeled, the rest
    unlabeled with their labels moved to ``hidden``. ``limit`` reads only the first lines (tests).
    ``lazy`` reads no pixels now: every slice is read from its file when used (``core.data.lazy``)."""
    if lazy:
        return lazy_ssl4mis_slices(root, labeled_count, list_file, limit=limit)
    vols = read_ssl4mis_slices(root, list_file, limit=limit)
    if not 0 < labeled_count <= len(vols):
        raise DataError(f"labeled_count must be between 1 and {len(vols)} (the listed slices), "
                        f"got {labeled_count}.")
    labels = [v.labels if i < labeled_count else None for i, v in enumerate(vols)]
    hidden = [None if i < labeled_count else v.labels for i, v in enumerate(vols)]
    return SliceSet(
        images=[normalise_slice(v.image) for v in vols], labels=labels, hidden=hidden,
        ids=[v.name for v in vols], groups=[v.metadata["group"] for v in vols],
        positions=[v.metadata["position"] for v in vols], num_classes=4, class_names=list(ACDC_CLASS_NAMES),
    ).validate()


def ssl4mis(root: str | Path, labeled: int = 68, val_list: str | None = "val.list",
            limit: int | None = None, lazy: bool | None = False,
            budget_mb: float = 2048.0) -> tuple[SliceSet, SliceSet | None]:
    """ACDC-style data: the first ``labeled`` training slices labeled, the rest unlabeled (hidden labels).

    ``lazy=True`` reads slices from their files when used (``core.data.lazy``), training and validation alike;
    ``lazy=None`` decides: lazy when the listed slices would take more than ``budget_mb`` in memory.
    """
    root = Path(root)
    if limit is not None and limit < 1:
        raise DataError(f"--limit {limit} keeps no slice; give a number of training slices of at least 1, or leave "
                        "it out to use them all.")
    if labeled < 1:
        raise DataError(f"--labeled {labeled} labels no slice; give at least 1 (the first N listed slices keep "
                        "their labels).")
    if not (root / "train_slices.list").is_file():
        raise DataError(f"{root} has no train_slices.list. Point to an SSL4MIS-layout folder such as .../ACDC.")
    if lazy is None:
        lazy = ssl4mis_footprint_mb(root, limit=limit) > budget_mb
    train = ssl4mis_slices(root, labeled_count=labeled, limit=limit, lazy=lazy)
    val = None
    if val_list and (root / val_list).is_file():
        if lazy:
            val = ssl4mis_volume_slices(root, val_list, train.num_classes, train.class_names)
        else:
            vols = read_ssl4mis_volumes(root, val_list)
            val = slices_from_volumes(vols, train.num_classes, train.class_names)
    return train, val


def painted_volume(image: str | Path, labels: str | Path | None) -> Volume:
    """A user's volume read with its label file (a few slices painted), checked before any slicing."""
    vol = read_volume(image)
    if labels is not None:
        vol.labels = read_label(labels, like=vol)
    if vol.labels is None:
        raise DataError(f"{image} has no labels. Give --labels with a mask file in which a few slices are painted.")
    check_class_values(vol.labels, f"The labels '{labels or image}'")
    check_not_constant([vol], str(image))
    return vol


def volume_with_labels(image: str | Path, labels: str | Path | None, axis: int = 0,
                       class_names: Sequence[str] | None = None) -> tuple[SliceSet, Volume]:
    """A user's volume with a few painted slices: painted slices are labeled, the others unlabeled."""
    vol = painted_volume(image, labels)
    num_classes = len(class_names) if class_names else max(int(vol.labels.max()) + 1, 2)
    names = list(class_names) if class_names else ["background"] + [f"class {c}" for c in range(1, num_classes)]
    vol.validate(num_classes)
    return SliceSet.from_volume(vol, axis=axis, num_classes=num_classes, class_names=names), vol


def check_class_values(labels: np.ndarray, who: str) -> None:
    """Refuse labels whose class numbers a run cannot have (more than ``MAX_CLASSES``), naming the values."""
    top = int(labels.max()) if labels.size else 0
    if top < MAX_CLASSES:
        return
    values = np.unique(labels)
    shown = ", ".join(str(int(v)) for v in values[:8]) + (f", ... ({len(values)} values)" if len(values) > 8 else "")
    raise DataError(f"{who} hold the values {shown}, but class numbers must be 0 (background) to "
                    f"{MAX_CLASSES - 1}; save the mask with classes 0, 1, 2, ... (a binary mask as 0/1, 0/255 or "
                    "0/65535).")


def check_not_constant(volumes: Sequence[Volume], where: str) -> None:
    """Refuse training on images that hold one value only (an all-zero export, a blank file)."""
    for vol in volumes:
        img = np.asarray(vol.image)
        if img.size and float(img.min()) != float(img.max()):
            return
    value = float(np.asarray(volumes[0].image).flat[0]) if volumes and np.asarray(volumes[0].image).size else 0.0
    what = "The image" if len(volumes) == 1 else f"All {len(volumes)} images"
    raise DataError(f"{what} in {where} hold a single value ({value:g}) everywhere, so there is nothing to "
                    "segment; check that the right file was exported (e.g. not an empty or all-zero volume).")


def with_classes(data: SliceSet, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None) -> tuple[SliceSet, str]:
    """Apply the user's class settings to ``data``, or refuse them; returns the data and a line saying
    what was found in the labels and what the run uses.

    ``None`` for both keeps what the data says. A count or a list of names (background first) is honoured
    when it covers every class in the labels (more classes than painted is fine: a class not painted yet),
    and refused with a ``ConfigError``/``DataError`` sentence when it does not.
    """
    if num_classes is not None and class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"num_classes = {num_classes} but class_names lists {len(class_names)} names; give one "
                          "name per class, background first, or only one of the two settings.")
    found = _label_values(data)
    top = max(found) if found else data.num_classes - 1
    wanted = num_classes if num_classes is not None else (len(class_names) if class_names is not None else None)
    if wanted is not None and wanted <= top:
        held = f"values {_values_text(found)}" if found else f"{data.num_classes} classes: {', '.join(data.class_names)}"
        raise DataError(f"The labels hold class {top} ({held}), but the settings give {wanted} classes "
                        f"(0..{wanted - 1}); set num_classes to at least {top + 1} with one name per class, or leave "
                        "both settings out to use what the labels hold.")
    if wanted is not None:
        names = list(class_names) if class_names is not None else default_class_names(wanted)
        if wanted != data.num_classes or names != list(data.class_names):
            data.num_classes, data.class_names = wanted, names
            data.validate()
        origin = "as set"
    else:
        origin = "from the labels"
    seen = f"the labeled slices hold {_values_text(found)}" if found else "the labels are read when used"
    return data, (f"Classes: {data.num_classes} ({', '.join(data.class_names)}), {origin}; {seen}.")


def _label_values(data: SliceSet) -> list[int]:
    """The class values in the labeled slices (none for a lazy set: reading them all would cost the run's start)."""
    if getattr(data.labels, "lazy", False):
        return []
    values: set[int] = set()
    for lab in data.labels:
        if lab is not None and lab.size:
            values.update(int(v) for v in np.unique(lab))
    return sorted(values)


def _values_text(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values[:10]) + (f", ... ({len(values)} values)" if len(values) > 10 else "")


def nifti_cohort(images: Sequence[str | Path], labels: Sequence[str | Path | None] | None = None,
                 labeled_volumes: Sequence[int] | None = None, axis: int = 0,
                 class_names: Sequence[str] | None = None) -> SliceSet:
    """Many NIfTI volumes, read one slice at a time (``core.data.lazy.nifti_slices``): the painted slices of
    the labeled volumes are labeled, everything else unlabeled. Use ``.nii`` rather than ``.nii.gz``."""
    return nifti_slices(images, labels, labeled_volumes=labeled_volumes, axis=axis,
                        num_classes=len(class_names) if class_names else None, class_names=class_names)


def image_folder(folder: str | Path, labeled: int = 30, seed: int = 0) -> tuple[SliceSet, list[Volume]]:
    """2D images with masks (the BUSI layout): ``labeled`` images keep their masks, the rest hide them."""
    vols = [v for v in read_image_folder(folder) if v.labels is not None]
    if not vols:
        raise DataError(f"No image with a *_mask*.png mask was found in {folder}.")
    if not any(v.labels.any() for v in vols):
        raise DataError(f"All {len(vols)} masks in {folder} are empty (no pixel above 0), so there is nothing to "
                        "learn but background; check that the *_mask files are the right ones (any value > 0 is "
                        "the lesion).")
    check_not_constant(vols, str(folder))
    order = np.random.default_rng(seed).permutation(len(vols))
    keep = set(order[:labeled].tolist())
    lab = [v for i, v in enumerate(vols) if i in keep]
    unl = [v for i, v in enumerate(vols) if i not in keep]
    names = ["background", "lesion"]
    a = slices_from_volumes(lab, 2, names)
    b = slices_from_volumes(unl, 2, names, as_hidden=True)
    return concat(a, b), vols


def concat(a: SliceSet, b: SliceSet) -> SliceSet:
    return SliceSet(images=a.images + b.images, labels=a.labels + b.labels, hidden=a.hidden + b.hidden,
                    ids=a.ids + b.ids, groups=a.groups + b.groups, positions=a.positions + b.positions,
                    num_classes=a.num_classes, class_names=list(a.class_names))


def phantom(seed: int = 0, shape: tuple[int, int, int] = (12, 160, 160)) -> tuple[SliceSet, Volume, list[int]]:
    """The bundled synthetic cardiac volume with three 'hand-labeled' slices; the rest keep hidden labels."""
    vol = make_cardiac_phantom(shape=shape, seed=seed)
    picked = list(sample_labeled_slices(vol))
    names = vol.metadata.get("class_names", ACDC_CLASS_NAMES)
    images, labels, hidden = [], [], []
    for z in range(vol.image.shape[0]):
        images.append(normalise_slice(vol.image[z]))
        labels.append(vol.labels[z].astype(np.uint8) if z in picked else None)
        hidden.append(None if z in picked else vol.labels[z].astype(np.uint8))
    data = SliceSet(images=images, labels=labels, hidden=hidden, ids=[f"{vol.name}_{z}" for z in range(len(images))],
                    groups=[vol.name] * len(images), positions=list(range(len(images))),
                    num_classes=len(names), class_names=list(names))
    return data, vol, picked
