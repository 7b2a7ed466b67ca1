"""ACDC's SSL4MIS training slices as a cohort of NIfTI volumes, for ``acdc.py --through-cohort`` and its test.

The SSL4MIS layout stores each training volume as one ``data/slices/<volume>_slice_<n>.h5`` file per slice
(``n`` from 1 in this copy) and lists them in ``train_slices.list``: volume by volume (in ``train.list``'s order,
not by name), each volume's slices shuffled. :func:`write_cohort` stacks each volume's slices into
``images/<name>.nii`` (float32, the stored values, NIfTI axis order X, Y, Z as the readers expect) and writes
``labels/<name>.nii`` (uint8) for the volumes holding a labeled slice, with the labeled slices' labels and zeros
elsewhere. The other volumes get no label file: the cohort path treats them as unlabeled.

Two layouts (``as_listed``):

* ``as_listed=False``: ``<name>`` is the volume id, slices in slice-number order (the anatomical volumes);
* ``as_listed=True``: ``<name>`` is ``<rank>_<volume id>`` (``rank``: the volume's place in the list, 3 digits)
  and each volume's slices are stacked in the list's order, so the cohort's order (natural name order, then
  position; ``core/data/cohort.py``) is the list's order. The engine draws batches by position in the labeled
  and unlabeled index lists, so only this layout lets a seed draw the same slices as the SSL4MIS path.

The split: a label file paints its labeled slices, so a labeled slice that is all background
(``patient099_frame02_slice_1`` among the 3 cases' 68) is unlabeled unless the label files are declared
complete (``cohort_slices(..., labels_complete=True)``, ``train --labels-complete``): the labeled cases are whole
volumes (``whole_volumes``), as in SSL4MIS, where the first N listed slices are labeled.

Ids: ``<name>_slice_<z>`` with ``z`` from 0 (the position in the file); SSL4MIS: the file's number
(``cohort_id_map`` maps one to the other).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from napari_samatch.core.data.io import read_list
from napari_samatch.core.data.slices import ACDC_CLASS_NAMES, SliceSet


def split_id(sid: str) -> tuple[str, int]:
    volume, _, n = sid.rpartition("_slice_")
    return volume, int(n)


def volume_slices(root: Path, list_file: str = "train_slices.list", as_listed: bool = False) -> dict[str, list[str]]:
    """Each listed volume's slice ids, volumes in order of first appearance; slices in slice-number order,
    or (``as_listed``) in the list's order."""
    out: dict[str, list[str]] = defaultdict(list)
    for sid in read_list(root, list_file):
        out[split_id(sid)[0]].append(sid)
    return out if as_listed else {v: sorted(ids, key=lambda s: split_id(s)[1]) for v, ids in out.items()}


def file_names(root: Path, list_file: str = "train_slices.list", as_listed: bool = False) -> dict[str, str]:
    """Volume id -> its cohort name: the id itself, or ``<rank>_<id>`` so that name order is list order."""
    vols = list(volume_slices(root, list_file))
    return {v: f"{k:03d}_{v}" if as_listed else v for k, v in enumerate(vols)}


def cohort_id_map(root: Path, list_file: str = "train_slices.list", as_listed: bool = False) -> dict[str, str]:
    """SSL4MIS slice id -> the cohort's id of the same slice (``<name>_slice_<position in the file, from 0>``)."""
    names = file_names(root, list_file, as_listed)
    return {sid: f"{names[v]}_slice_{z}" for v, ids in volume_slices(root, list_file, as_listed).items()
            for z, sid in enumerate(ids)}


def whole_volumes(root: Path, labeled_ids: set[str], list_file: str = "train_slices.list") -> bool:
    """Whether every volume is labeled in all its slices or in none (so complete label files say the split)."""
    return all(len({sid in labeled_ids for sid in ids}) == 1 for ids in volume_slices(root, list_file).values())


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An SSL4MIS file's stored ``image`` and ``label``: one slice, or a whole val volume."""
    import h5py

    with h5py.File(str(path), "r") as f:
        return f["image"][()], f["label"][()]


def write_cohort(root: Path, folder: Path, labeled_ids: set[str], volumes: list[str] | None = None,
                 list_file: str = "train_slices.list", as_listed: bool = False) -> tuple[Path, Path]:
    """``folder/images/<name>.nii`` for every listed volume (or ``volumes``) and ``folder/labels/<name>.nii``
    for those with a slice in ``labeled_ids``; returns the two folders. ``as_listed``: see the module docstring."""
    import nibabel as nib

    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    names = file_names(root, list_file, as_listed)
    for v, ids in volume_slices(root, list_file, as_listed).items():
        if volumes is not None and v not in volumes:
            continue
        pairs = [read_h5(root / "data" / "slices" / f"{sid}.h5") for sid in ids]
        image = np.stack([p[0] for p in pairs]).astype(np.float32, copy=False)  # (Z, H, W), the stored values
        nib.save(nib.Nifti1Image(np.ascontiguousarray(image.transpose(2, 1, 0)), np.eye(4)),
                 images / f"{names[v]}.nii")
        if any(sid in labeled_ids for sid in ids):
            lab = np.stack([p[1] if sid in labeled_ids else np.zeros_like(p[1]) for sid, p in zip(ids, pairs)])
            nib.save(nib.Nifti1Image(np.ascontiguousarray(lab.astype(np.uint8).transpose(2, 1, 0)), np.eye(4)),
                     labels / f"{names[v]}.nii")
    return images, labels


def cohort_data(images: Path, labels: Path, labels_complete: bool = False) -> SliceSet:
    """The cohort path of ``napari-samatch train --images DIR --labels DIR [--labels-complete]`` (lazy NIfTI)."""
    from napari_samatch.core.data.cohort import cohort_slices, list_cohort

    return cohort_slices(list_cohort(images, labels), class_names=ACDC_CLASS_NAMES, labels_complete=labels_complete)


def restrict(data: SliceSet, keep_ids: set[str]) -> SliceSet:
    """The slices of ``data`` whose id is in ``keep_ids``, in ``data``'s order (``--limit-unlabeled``)."""
    return data.subset([i for i, sid in enumerate(data.ids) if sid in keep_ids])


def as_cohort(ssl: SliceSet, id_map: dict[str, str], order: list[str], labels_complete: bool = False) -> SliceSet:
    """The SSL4MIS set rearranged like the cohort: its slices in the cohort's ``order`` (cohort ids), renamed,
    an all-background labeled slice made unlabeled unless ``labels_complete`` (as the cohort's split), no
    hidden labels (the cohort's unlabeled volumes have no label file). The control of ``--through-cohort``."""
    where = {id_map[sid]: i for i, sid in enumerate(ssl.ids)}
    sub = ssl.subset([where[cid] for cid in order])
    labels = [lab if lab is not None and (labels_complete or lab.any()) else None for lab in sub.labels]
    groups_pos = [(cid.rpartition("_slice_")[0], int(cid.rpartition("_slice_")[2])) for cid in order]
    return SliceSet(list(sub.images), labels, [None] * len(order), list(order), [g for g, _ in groups_pos],
                    [z for _, z in groups_pos], ssl.num_classes, list(ssl.class_names)).validate()


def compare(ssl: SliceSet, cohort: SliceSet, id_map: dict[str, str]) -> dict[str, Any]:
    """Slice by slice (read through both paths): identical images and labels, and the split and order
    differences, as counts and examples."""
    where = {cid: i for i, cid in enumerate(cohort.ids)}
    missing = [sid for sid in ssl.ids if id_map[sid] not in where]
    extra = sorted(set(cohort.ids) - {id_map[sid] for sid in ssl.ids})
    image_diff, label_diff, split_diff = [], [], []
    for i, sid in enumerate(ssl.ids):
        j = where.get(id_map[sid])
        if j is None:
            continue
        a, b = ssl.images[i], cohort.images[j]
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            image_diff.append(sid)
        la, lb = ssl.labels[i], cohort.labels[j]
        if (la is None) != (lb is None):
            split_diff.append(sid)
        elif la is not None and not np.array_equal(la.astype(np.int64), lb.astype(np.int64)):
            label_diff.append(sid)

    # the engine draws labeled and unlabeled slices from two index lists: their orders are what a seed sees
    ssl_lab = [id_map[ssl.ids[i]] for i in ssl.labeled_indices()]
    ssl_unl = [id_map[ssl.ids[i]] for i in ssl.unlabeled_indices()]
    coh_lab = [cohort.ids[i] for i in cohort.labeled_indices()]
    coh_unl = [cohort.ids[i] for i in cohort.unlabeled_indices()]
    return {"slices": [len(ssl), len(cohort)], "labeled": [len(ssl_lab), len(coh_lab)],
            "unlabeled": [len(ssl_unl), len(coh_unl)], "missing_in_cohort": missing, "extra_in_cohort": extra,
            "image_differs": image_diff, "label_differs": label_diff, "split_differs": split_diff,
            "same_labeled_order": ssl_lab == coh_lab, "same_unlabeled_order": ssl_unl == coh_unl,
            "same_order": [id_map[s] for s in ssl.ids] == list(cohort.ids)}


def folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20

