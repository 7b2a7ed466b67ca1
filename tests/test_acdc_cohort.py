"""Issue 17: ACDC's training slices read through the cohort path (NIfTI files) are the SSL4MIS path's slices,
and, written in the list's order with complete label files, train to the same weights on the same seed.

Two training volumes (patient099_frame02 of the 3 labeled cases, with an all-background labeled slice, and
the unlabeled patient100_frame01) written by ``benchmarks/_acdc_cohort.py`` as ``acdc.py --through-cohort``
does; headless, a few seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from napari_samatch.core.data import datasets
from napari_samatch.core.data.io import read_list
from napari_samatch.core.data.store import training_slices

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _acdc_cohort as ac  # noqa: E402

LABELED, UNLABELED = "patient099_frame02", "patient100_frame01"


def _both(root: Path, tmp_path: Path, as_listed: bool = False, complete: bool = False):
    ids = [s for s in read_list(root, "train_slices.list") if ac.split_id(s)[0] in (LABELED, UNLABELED)]
    n_lab = sum(ac.split_id(s)[0] == LABELED for s in ids)
    assert ids[:n_lab] == [s for s in ids if ac.split_id(s)[0] == LABELED]  # the labeled volume is listed first
    (tmp_path / "sub.list").write_text("\n".join(ids) + "\n")
    ssl = datasets.ssl4mis_slices(root, labeled_count=n_lab, list_file=str(tmp_path / "sub.list"))
    images, labels = ac.write_cohort(root, tmp_path / "cohort", set(ids[:n_lab]), volumes=[LABELED, UNLABELED],
                                     as_listed=as_listed)
    name = ac.file_names(root, as_listed=as_listed)[LABELED]
    assert sorted(p.name for p in labels.iterdir()) == [f"{name}.nii"]  # the unlabeled volume has no label file
    return ssl, ac.cohort_data(images, labels, labels_complete=complete)


def test_acdc_training_slices_through_the_cohort_path(shared_data, tmp_path):
    root = shared_data / "ACDC"
    ssl, cohort = _both(root, tmp_path)
    id_map = ac.cohort_id_map(root)
    cmp = ac.compare(ssl, cohort, id_map)
    # the same slices, bit for bit: values (float32 after the per-slice normalisation), shapes, labels
    assert cmp["slices"] == [len(ssl), len(ssl)]
    assert cmp["missing_in_cohort"] == [] and cmp["extra_in_cohort"] == []
    assert cmp["image_differs"] == [] and cmp["label_differs"] == []
    # the split: the SSL4MIS path labels an all-background slice, a label file cannot paint it
    empty = [s for i, s in enumerate(ssl.ids) if ssl.labels[i] is not None and not ssl.labels[i].any()]
    assert empty == ["patient099_frame02_slice_1"]
    assert cmp["split_differs"] == empty
    assert cmp["labeled"] == [16, 15] and cmp["unlabeled"][1] == cmp["unlabeled"][0] + 1
    # the order: the list is shuffled within each volume; the cohort reads volumes by name, slices by position
    assert not cmp["same_order"]
    assert cohort.ids == [f"{v}_slice_{z}" for v in sorted((LABELED, UNLABELED))
                          for z in range(cohort.groups.count(v))]
    assert cohort.positions == [int(i.rpartition("_slice_")[2]) for i in cohort.ids]
    # the orientation: slice z of the cohort is file slice_<z + 1>, the right way round
    i, j = ssl.ids.index(f"{LABELED}_slice_5"), cohort.ids.index(f"{LABELED}_slice_4")
    assert cohort.images[j].shape == ssl.images[i].shape and np.array_equal(cohort.images[j], ssl.images[i])


def test_the_control_is_the_cohort_and_the_engine_sees_the_same_tensors(shared_data, tmp_path):
    root = shared_data / "ACDC"
    ssl, cohort = _both(root, tmp_path)
    control = ac.as_cohort(ssl, ac.cohort_id_map(root), list(cohort.ids))
    cmp = ac.compare(control, cohort, {i: i for i in control.ids})
    assert cmp["same_order"] and cmp["same_labeled_order"] and cmp["same_unlabeled_order"]
    assert not (cmp["image_differs"] or cmp["label_differs"] or cmp["split_differs"])
    # what training uses: stacked tensors for the in-memory control, a SliceStore for the lazy cohort
    a_img, a_lab, a_labeled = training_slices(control, 64, torch.device("cpu"), 2048)
    b_img, b_lab, b_labeled = training_slices(cohort, 64, torch.device("cpu"), 2048)
    assert isinstance(a_img, torch.Tensor) and not isinstance(b_img, torch.Tensor)
    every = list(range(len(cohort)))
    assert torch.equal(a_labeled, b_labeled)
    assert torch.equal(a_img, b_img[every]) and torch.equal(a_lab, b_lab[every])


def _train(data, method: str):
    """A tiny run (3 warm-up + 3 joint steps at 32 px, 1 thread): the Match model's weights."""
    from napari_samatch.core.config import preset
    from napari_samatch.core.engine.engine import Engine

    config = preset("standard", method=method, warmup_method="supervised", warmup_iters=3, sam_iters=0,
                    joint_iters=3, size=32, batch_labeled=4, batch_unlabeled=4, lr=0.05, device="cpu", threads=1,
                    eval_every=0, checkpoint_every=0, seed=3, num_classes=4)
    engine = Engine(data, config)
    engine.run()
    return engine.unet.state_dict()


def test_listed_order_and_complete_labels_train_as_the_ssl4mis_path(shared_data, tmp_path):
    root = shared_data / "ACDC"
    ssl, cohort = _both(root, tmp_path, as_listed=True, complete=True)
    id_map = ac.cohort_id_map(root, as_listed=True)
    cmp = ac.compare(ssl, cohort, id_map)
    # the list's order (files named by rank, slices stacked as listed) and its split (the empty slice labeled)
    assert cmp["same_order"] and cmp["same_labeled_order"] and cmp["same_unlabeled_order"]
    assert cmp["split_differs"] == [] and cmp["labeled"] == [16, 16]
    assert not (cmp["image_differs"] or cmp["label_differs"])
    assert cohort.ids[0] == id_map[ssl.ids[0]] == "001_patient099_frame02_slice_0"  # listed 2nd: rank 001
    # the same seed draws the same slices: the same weights, lazy cohort and stacked SSL4MIS arrays alike
    a = {}
    for method in ("supervised", "unimatch"):
        a[method], b = _train(ssl, method), _train(cohort, method)
        assert all(torch.equal(a[method][k], b[k]) for k in b), method
    # either rule alone is not enough: the volume's own order, or painted labels only, draw other slices
    for as_listed, complete in ((False, True), (True, False)):
        (tmp_path / f"{as_listed}-{complete}").mkdir()
        other = _both(root, tmp_path / f"{as_listed}-{complete}", as_listed=as_listed, complete=complete)[1]
        b = _train(other, "supervised")
        assert not all(torch.equal(a["supervised"][k], b[k]) for k in b), (as_listed, complete)
