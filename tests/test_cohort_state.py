"""The cohort the napari Cohort dock holds (core, headless): shapes from headers, labeled counts, paintings kept in
memory and overriding label files in training, and the masks of every volume written into a folder."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from cohort_helpers import SHAPE, patient_affine, square_volume, write_cohort
from napari_samatch.core.data.cohort import volume_shape
from napari_samatch.core.data.cohort_state import CohortState, painted_slices
from napari_samatch.core.errors import DataError, StorageError
from napari_samatch.core.match.cohort_masks import check_mask_folder, mask_targets, predict_to_folder
from napari_samatch.core.match.unet import UNet


@pytest.fixture
def cohort(tmp_path) -> tuple[Path, Path]:
    """p1 (a label file painting slices 1 and 4), p2 and p3 (no label file)."""
    return write_cohort(tmp_path, square_volume, patient_affine)


def test_shapes_from_headers_and_labeled_counts(cohort, tmp_path):
    state = CohortState.open(*cohort)
    rows = state.rows()
    assert [(r.name, r.shape, r.labeled, r.painted_here) for r in rows] == [
        ("p1", SHAPE, 2, False), ("p2", SHAPE, 0, False), ("p3", SHAPE, 0, False)]
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((3, 8, 9), np.uint16))
    assert volume_shape(tmp_path / "t.tif") == (3, 8, 9)
    assert painted_slices(np.zeros((2, 3)), 0) == []


def test_paintings_are_kept_and_override_label_files_in_training(cohort):
    state = CohortState.open(*cohort)
    vol = state.load("p2")
    assert vol.labels.shape == SHAPE and not vol.labels.any()
    assert not state.keep("p2", vol.labels)  # unchanged: nothing held in memory
    painted = vol.labels.copy()
    painted[3, 8:12, 6:10] = 2  # a new class on slice 3
    assert state.keep("p2", painted) and state.labeled("p2") == [3]
    painted[3] = 0  # the held copy is the state's own
    assert state.labeled("p2") == [3]
    again = state.load("p2").labels
    assert again[3].max() == 2

    # p1's painting replaces its label file: slice 4 erased, slice 0 added
    p1 = state.load("p1").labels
    p1[4] = 0
    p1[0, 6:16, 5:13] = 1
    assert state.keep("p1", p1)
    assert [(r.name, r.labeled, r.painted_here) for r in state.rows()] == [
        ("p1", 2, True), ("p2", 1, True), ("p3", 0, False)]
    data = state.training_slices(["background", "heart"])
    assert data.is_lazy and len(data) == 18
    assert [data.ids[i] for i in data.labeled_indices()] == ["p1_slice_0", "p1_slice_1", "p2_slice_3"]
    assert data.num_classes == 3 and data.class_names == ["background", "heart", "class 2"]
    assert data.labels[data.ids.index("p2_slice_3")].max() == 2
    with pytest.raises(DataError, match="shape"):
        state.keep("p3", np.zeros((2, 2, 2), np.uint8))


def test_no_label_anywhere_is_a_sentence(cohort):
    state = CohortState.open(cohort[0])
    with pytest.raises(DataError, match="No slice of the 3 volumes is labeled yet"):
        state.training_slices()
    with pytest.raises(DataError, match="is not a folder"):
        CohortState.open(cohort[0] / "p1.nii.gz")


def test_masks_of_every_volume_keep_the_source_geometry(cohort, tmp_path):
    state = CohortState.open(*cohort)
    out = tmp_path / "masks"
    targets = check_mask_folder(state.members, out, overwrite=False)
    assert targets == mask_targets(state.members, out)
    written = predict_to_folder(UNet(1, 2), 32, state.members, targets, overwrite=False)
    assert [p.name for p in written] == ["p1.nii.gz", "p2.nii.gz", "p3.nii.gz"]
    for k, p in enumerate(written, start=1):
        img = nib.load(str(p))
        assert img.shape == SHAPE[::-1] and np.allclose(img.affine, patient_affine(k))
    with pytest.raises(StorageError, match="already exists"):
        check_mask_folder(state.members, out, overwrite=False)
    assert check_mask_folder(state.members, out, overwrite=True) == targets
    with pytest.raises(DataError, match="is the input"):
        check_mask_folder(state.members, cohort[0], overwrite=True)


def test_paintings_on_a_cohort_read_eagerly(tmp_path):
    """TIFF volumes are read whole (not lazily); a painting still stands in for the missing label file."""
    images = tmp_path / "tiffs"
    images.mkdir()
    for k in (1, 2):
        tifffile.imwrite(images / f"t{k}.tif", square_volume(k)[0])
    state = CohortState.open(images)
    assert [r.shape for r in state.rows()] == [SHAPE, SHAPE]
    lab = state.load("t2").labels
    lab[[0, 5]] = square_volume(2)[1][[0, 5]]
    assert state.keep("t2", lab)
    data = state.training_slices()
    assert not data.is_lazy and [data.ids[i] for i in data.labeled_indices()] == ["t2_slice_0", "t2_slice_5"]


def test_complete_label_files_label_every_slice_as_in_training(cohort):
    """``labels_complete``: p1's label file labels all six slices (background-only ones too), as ``cohort_slices``
    trains on them, and still after a correction painted here; a member without a label file counts its painted
    slices only. The flag goes through the session; an
    older session (no key) opens without it; without a labels folder it is a sentence."""
    state = CohortState.open(*cohort, labels_complete=True)
    assert [(r.name, r.labeled) for r in state.rows()] == [("p1", 6), ("p2", 0), ("p3", 0)]

    def labeled_ids(state: CohortState) -> list[str]:
        return [f"{n}_slice_{z}" for n in state.names() for z in state.labeled(n)]

    data = state.training_slices()
    assert [data.ids[i] for i in data.labeled_indices()] == labeled_ids(state) == [f"p1_slice_{z}" for z in range(6)]

    p2 = state.load("p2").labels
    p2[2, 8:12, 6:10] = 1
    assert state.keep("p2", p2) and state.labeled("p2") == [2]
    p1 = state.load("p1").labels
    p1[0, 6:16, 5:13] = 1  # a correction of p1's complete label file: still complete
    assert state.keep("p1", p1) and state.labeled("p1") == list(range(6))
    data = state.training_slices()
    assert [data.ids[i] for i in data.labeled_indices()] == labeled_ids(state) == [
        *(f"p1_slice_{z}" for z in range(6)), "p2_slice_2"]
    assert data.labels[0].max() == 1  # the correction, not the file's empty slice
    state.set_labels_complete(False)
    assert state.labeled("p1") == [0, 1, 4]
    data = state.training_slices()
    assert [data.ids[i] for i in data.labeled_indices()] == labeled_ids(state)
    state.set_labels_complete(True)
    from napari_samatch.core.data import cohort as files  # NIfTI files are read lazily; other formats eagerly
    for read in (files._lazy, files._eager):
        data = read(state.members, 0, None, dict(state.paintings), True)
        assert [data.ids[i] for i in data.labeled_indices()] == labeled_ids(state), read

    doc = state.session_doc()
    assert doc["labels_complete"] is True
    again = CohortState.from_session(doc, {})
    assert again.labels_complete and again.labeled("p1") == list(range(6))
    older = {k: v for k, v in doc.items() if k != "labels_complete"}
    assert not CohortState.from_session(older, {}).labels_complete
    again.set_labels_complete(False)
    assert again.labeled("p1") == [1, 4]  # the file read once serves either rule

    with pytest.raises(DataError, match="labels folder"):
        CohortState.open(cohort[0], labels_complete=True)
    with pytest.raises(DataError, match="labels folder"):
        CohortState.open(cohort[0]).set_labels_complete(True)
