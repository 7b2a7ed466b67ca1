"""ACDC's SSL4MIS training slices as a cohort of NIfTI volumes, for ``acdc.py --through-cohort`` and its test.

The SSL4MIS layout stores each training volume as one ``data/slices/<volume>_slice_<n>.h5`` file per slice
(``n`` from 1 in this copy) and lists them shuffled in ``train_slices.list``. :func:`write_cohort` stacks each
volume's slices in slice-number order into ``images/<volume>.nii`` (float32, the stored values, NIfTI axis
order X, Y, Z as the readers expect) and writes ``labels/<volume>.nii`` (uint8) for the volumes holding a
labeled slice, with the labeled slices' labels and zeros elsewhere. The other volumes get no label file:
the cohort path treats them as unlabeled.

What the cohort path sees differently, by construction (``compare``):

* order: volumes in natural name order, each volume's slices by position; SSL4MIS: the list's order;
* ids: ``<volume>_slice_<z>`` with ``z`` from 0 (the position in the volume); SSL4MIS: the file's number;
* the split: a slice is labeled when its label file paints it (any non-zero voxel); SSL4MIS labels the first
  N listed slices, an all-background one included (``patient099_frame02_slice_1`` among the 3 cases' 68).
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


def volume_slices(root: Path, list_file: str = "train_slices.list") -> dict[str, list[str]]:
    """Each listed volume's slice ids in slice-number order, volumes in order of first appearance."""
    out: dict[str, list[str]] = defaultdict(list)
    for sid in read_list(root, list_file):
        out[split_id(sid)[0]].append(sid)
    return {v: sorted(ids, key=lambda s: split_id(s)[1]) for v, ids in out.items()}


def cohort_id_map(root: Path, list_file: str = "train_slices.list") -> dict[str, str]:
    """SSL4MIS slice id -> the cohort's id of the same slice (``<volume>_slice_<position from 0>``)."""
    return {sid: f"{v}_slice_{z}" for v, ids in volume_slices(root, list_file).items() for z, sid in enumerate(ids)}


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(str(path), "r") as f:
        return f["image"][()], f["label"][()]


def write_cohort(root: Path, folder: Path, labeled_ids: set[str], volumes: list[str] | None = None,
                 list_file: str = "train_slices.list") -> tuple[Path, Path]:
    """``folder/images/<volume>.nii`` for every listed volume (or ``volumes``) and ``folder/labels/<volume>.nii``
    for those with a slice in ``labeled_ids``; returns the two folders."""
    import nibabel as nib

    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for v, ids in volume_slices(root, list_file).items():
        if volumes is not None and v not in volumes:
            continue
        pairs = [_read_h5(root / "data" / "slices" / f"{sid}.h5") for sid in ids]
        image = np.stack([p[0] for p in pairs]).astype(np.float32, copy=False)  # (Z, H, W), the stored values
        nib.save(nib.Nifti1Image(np.ascontiguousarray(image.transpose(2, 1, 0)), np.eye(4)), images / f"{v}.nii")
        if any(sid in labeled_ids for sid in ids):
            lab = np.stack([p[1] if sid in labeled_ids else np.zeros_like(p[1]) for sid, p in zip(ids, pairs)])
            nib.save(nib.Nifti1Image(np.ascontiguousarray(lab.astype(np.uint8).transpose(2, 1, 0)), np.eye(4)),
                     labels / f"{v}.nii")
    return images, labels


def cohort_data(images: Path, labels: Path) -> SliceSet:
    """The cohort path of ``napari-samatch train --images DIR --labels DIR`` (lazy NIfTI slices)."""
    from napari_samatch.core.data.cohort import cohort_slices, list_cohort

    return cohort_slices(list_cohort(images, labels), class_names=ACDC_CLASS_NAMES)


def restrict(data: SliceSet, keep_ids: set[str]) -> SliceSet:
    """The slices of ``data`` whose id is in ``keep_ids``, in ``data``'s order (``--limit-unlabeled``)."""
    return data.subset([i for i, sid in enumerate(data.ids) if sid in keep_ids])


def as_cohort(ssl: SliceSet, id_map: dict[str, str], order: list[str]) -> SliceSet:
    """The SSL4MIS set rearranged like the cohort: its slices in the cohort's ``order`` (cohort ids), renamed,
    an all-background labeled slice made unlabeled (the cohort cannot tell it from an unpainted one), no
    hidden labels (the cohort's unlabeled volumes have no label file). The control of ``--through-cohort``."""
    where = {id_map[sid]: i for i, sid in enumerate(ssl.ids)}
    sub = ssl.subset([where[cid] for cid in order])
    labels = [lab if lab is not None and lab.any() else None for lab in sub.labels]
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

