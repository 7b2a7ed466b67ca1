"""Cohorts on the command line: ``train --images DIR --labels DIR`` and ``predict --images DIR --out DIR``, on
tiny synthetic volumes (NIfTI, TIFF, .h5 and a DICOM series) and a schedule of a few iterations."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile

from cohort_helpers import SHAPE, painted, patient_affine, save_nifti, write_cohort
from cohort_helpers import square_volume as volume
from napari_samatch.cli import main
from napari_samatch.core.data.cohort import cohort_slices, list_cohort
from napari_samatch.core.errors import DataWarning

TRAIN = ["--method", "supervised", "--warmup-iters", "0", "--sam-iters", "0", "--joint-iters", "2", "--size", "32",
         "--device", "cpu", "--threads", "1", "--eval-every", "0", "--quiet"]


@pytest.fixture
def nifti_cohort(tmp_path) -> tuple[Path, Path]:
    """Three NIfTI volumes; 'p1' has 2 painted slices, 'p2' one (a '_label' file), 'p3' none; one orphan label."""
    images, labels = write_cohort(tmp_path, volume, patient_affine)
    save_nifti(labels / "p2_label.nii.gz", painted(volume(2)[1], [2]), patient_affine(2))
    save_nifti(labels / "someone_else.nii.gz", painted(volume(9)[1], [0]), patient_affine(9))
    (images / "README.txt").write_text("three patients")
    return images, labels


def test_members_are_matched_by_name(nifti_cohort):
    images, labels = nifti_cohort
    with pytest.warns(DataWarning, match="1 label file.*match no volume.*'someone_else.nii.gz'"):
        members = list_cohort(images, labels)
    assert [m.name for m in members] == ["p1", "p2", "p3"]
    assert [m.labels.name if m.labels else None for m in members] == ["p1.nii.gz", "p2_label.nii.gz", None]


def test_painted_slices_are_the_labeled_ones_and_nifti_stays_lazy(nifti_cohort):
    images, labels = nifti_cohort
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        data = cohort_slices(list_cohort(images, labels))
    assert data.is_lazy and len(data) == 18
    assert [data.ids[i] for i in data.labeled_indices()] == ["p1_slice_1", "p1_slice_4", "p2_slice_2"]
    assert len(data.unlabeled_indices()) == 15 and data.num_classes == 2


def test_other_formats_are_read_eagerly(tmp_path):
    from test_dicom import write_series  # a DICOM series of 5 slices 12 x 16, written by pydicom

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    image, lab = volume(1)
    tifffile.imwrite(images / "a.tif", image)
    tifffile.imwrite(labels / "a_mask.tif", painted(lab, [3]))
    with h5py.File(images / "b.h5", "w") as f:  # its own 'label' is ground truth: hidden, not trained on
        f["image"], f["label"] = volume(2)
    write_series(images / "c")
    data = cohort_slices(list_cohort(images, labels))
    assert not data.is_lazy and len(data) == 6 + 6 + 5
    assert [data.ids[i] for i in data.labeled_indices()] == ["a_slice_3"]
    assert [data.groups[i] for i in data.hidden_indices()] == ["b"] * 6


def test_cli_trains_on_a_cohort_and_predicts_every_volume(nifti_cohort, tmp_path, capsys):
    images, labels = nifti_cohort
    run = tmp_path / "run"
    assert main(["train", "--images", str(images), "--labels", str(labels), "--out", str(run), *TRAIN]) == 0
    err = capsys.readouterr().err
    assert "3 volumes, 2 with a label file" in err and "3 labeled and 15 unlabeled slices" in err
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    masks = tmp_path / "masks"
    assert main(["predict", "--model", str(run / "model.pt"), "--images", str(images), "--out", str(masks)]) == 0
    assert sorted(p.name for p in masks.iterdir()) == ["p1.nii.gz", "p2.nii.gz", "p3.nii.gz"]
    for k in (1, 2, 3):  # each mask on its source's grid
        mask = nib.load(str(masks / f"p{k}.nii.gz"))
        assert mask.shape == SHAPE[::-1]
        np.testing.assert_allclose(mask.affine, patient_affine(k), atol=1e-5)
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before  # inputs untouched
    # the masks are named like the volumes, so they serve as --labels of the next round
    assert [m.labels.name for m in list_cohort(images, masks)] == ["p1.nii.gz", "p2.nii.gz", "p3.nii.gz"]
    capsys.readouterr()
    # a second predict does not replace the masks unless asked
    assert main(["predict", "--model", str(run / "model.pt"), "--images", str(images), "--out", str(masks)]) == 2
    assert "already exists; add --overwrite" in capsys.readouterr().err
    assert main(["predict", "--model", str(run / "model.pt"), "--images", str(images), "--out", str(masks),
                 "--overwrite"]) == 0


def test_cli_predicts_a_mixed_cohort_with_each_sources_geometry(tmp_path, nifti_cohort):
    from napari_samatch.core.data.io import read_volume
    from test_dicom import write_series

    images, labels = nifti_cohort
    write_series(images / "ct")
    tifffile.imwrite(images / "t.tif", volume(4)[0])
    run, masks = tmp_path / "run", tmp_path / "masks"
    assert main(["train", "--images", str(images), "--labels", str(labels), "--out", str(run), *TRAIN]) == 0
    assert main(["predict", "--model", str(run / "model.pt"), "--images", str(images), "--out", str(masks)]) == 0
    assert sorted(p.name for p in masks.iterdir()) == ["ct.nii.gz", "p1.nii.gz", "p2.nii.gz", "p3.nii.gz", "t.tif"]
    ct = read_volume(images / "ct")
    np.testing.assert_allclose(nib.load(str(masks / "ct.nii.gz")).affine @ [1, 2, 3, 1], ct.affine @ [3, 2, 1, 1],
                               atol=1e-5)
    assert tifffile.imread(masks / "t.tif").shape == SHAPE


def cli_error(argv: list, capsys) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("napari-samatch: ")
    return err


def test_cohort_mistakes_get_one_sentence(nifti_cohort, tmp_path, capsys):
    images, labels = nifti_cohort
    out = ["--out", tmp_path / "run"]
    assert "so no slice is labeled; give --labels DIR" in cli_error(["train", "--images", images, *out, *TRAIN],
                                                                     capsys)
    assert "is not a folder; --images takes a folder" in cli_error(
        ["train", "--images", images / "p1.nii.gz", *out, *TRAIN], capsys)
    assert "is not a folder; --labels takes the folder" in cli_error(
        ["train", "--images", images, "--labels", labels / "p1.nii.gz", *out, *TRAIN], capsys)
    (tmp_path / "empty").mkdir()
    assert "holds no volumes" in cli_error(["train", "--images", tmp_path / "empty", *out, *TRAIN], capsys)
    assert "Give one data source, not --image and --images" in cli_error(
        ["train", "--images", images, "--image", images / "p1.nii.gz", *out, *TRAIN], capsys)
    save_nifti(images / "p1.nii", volume(1)[0], patient_affine(1))
    assert "have the same name 'p1'" in cli_error(["train", "--images", images, "--labels", labels, *out, *TRAIN],
                                                  capsys)
    (images / "p1.nii").unlink()
    model = tmp_path / "m.pt"
    model.write_bytes(b"")
    assert "--image FILE (one volume) or --images DIR" in cli_error(
        ["predict", "--model", model, "--out", tmp_path / "o"], capsys)


def test_predict_never_writes_into_the_images_folder(nifti_cohort, tmp_path, capsys):
    images, labels = nifti_cohort
    run = tmp_path / "run"
    assert main(["train", "--images", str(images), "--labels", str(labels), "--out", str(run), *TRAIN]) == 0
    capsys.readouterr()
    err = cli_error(["predict", "--model", run / "model.pt", "--images", images, "--out", images], capsys)
    assert "is the input --images" in err and "nothing was written" in err
    assert sorted(p.name for p in images.iterdir()) == ["README.txt", "p1.nii.gz", "p2.nii.gz", "p3.nii.gz"]


def test_complete_label_files_label_every_slice_of_their_volumes(nifti_cohort, tmp_path):
    images, labels = nifti_cohort
    (labels / "someone_else.nii.gz").unlink()
    members = list_cohort(images, labels)
    data = cohort_slices(members, labels_complete=True)  # lazy NIfTI: empty slices of p1 and p2 labeled too
    assert data.is_lazy and len(data.labeled_indices()) == 12
    assert {data.groups[i] for i in data.unlabeled_indices()} == {"p3"}  # no label file: unlabeled
    assert not data.labels[0].any() and data.ids[0] == "p1_slice_0"  # a labeled slice that is all background
    # a painting replaces its member's label file: complete with the flag when it has one (a correction of that
    # file), its painted slices only when it has none or without the flag
    painting = painted(volume(1)[1], [2])
    data = cohort_slices(members, paintings={"p1": painting, "p3": painting}, labels_complete=True)
    assert [data.ids[i] for i in data.labeled_indices()] == [f"p{m}_slice_{z}" for m in (1, 2) for z in range(6)] + [
        "p3_slice_2"]
    data = cohort_slices(members, paintings={"p1": painting})
    assert [data.ids[i] for i in data.labeled_indices()][:1] == ["p1_slice_2"]
    # the eager path (TIFF) reads the flag the same way
    tif_images, tif_labels = tmp_path / "ti", tmp_path / "tl"
    tif_images.mkdir()
    tif_labels.mkdir()
    image, lab = volume(1)
    tifffile.imwrite(tif_images / "a.tif", image)
    tifffile.imwrite(tif_images / "b.tif", volume(2)[0])
    tifffile.imwrite(tif_labels / "a_mask.tif", painted(lab, [3]))
    tif = list_cohort(tif_images, tif_labels)
    assert [tuple(cohort_slices(tif, labels_complete=c).labeled_indices()) for c in (False, True)] == [
        (3,), tuple(range(6))]


def test_cli_labels_complete(nifti_cohort, tmp_path, capsys):
    images, labels = nifti_cohort
    run = tmp_path / "run"
    assert main(["train", "--images", str(images), "--labels", str(labels), "--labels-complete", "--out", str(run),
                 *TRAIN]) == 0
    err = capsys.readouterr().err
    assert "2 with a label file (complete: every slice labeled)" in err and "12 labeled and 6 unlabeled" in err
    out = ["--out", tmp_path / "run2"]
    refusals = {  # a user's mistake: exit status 2 and one sentence naming the fix
        "no --labels folder was given; add --labels DIR or leave --labels-complete out": ["--images", images],
        "--labels-complete applies only with --images, not with --image;": [
            "--image", images / "p1.nii.gz", "--labels", labels / "p1.nii.gz"],
        "--labels-complete applies only with --images, not with --ssl4mis;": ["--ssl4mis", tmp_path]}
    for expected, source in refusals.items():
        err = cli_error(["train", *source, "--labels-complete", *out, *TRAIN], capsys).strip()
        assert expected in err and err.count(". ") == 0 and err.endswith("."), err
    assert not (tmp_path / "run2").exists()
