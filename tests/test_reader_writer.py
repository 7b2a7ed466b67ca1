"""npe2 hooks without a viewer: reader, writer, sample data, manifest."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_samatch._reader import get_reader
from napari_samatch._sample_data import make_sample_data
from napari_samatch._writer import write_labels
from napari_samatch.core.data.sample import make_cardiac_phantom, sample_labeled_slices

AFFINE = np.array([[0.0, 0.0, -2.0, 5.0], [0.0, 1.25, 0.0, -3.0], [0.75, 0.0, 0.0, 1.0], [0, 0, 0, 1]])


def test_reader_rejects_other_files():
    for name in ("a.png", "a.txt", "a.gz", "folder"):
        assert get_reader(name) is None
    assert get_reader(["a.nii.gz", "b.png"]) is None
    assert callable(get_reader("a.nii.gz")) and callable(get_reader(["a.tif", "b.h5"]))


def test_nifti_reader_then_writer_round_trip(tmp_path):
    src = tmp_path / "scan.nii.gz"
    img = nib.Nifti1Image(np.random.default_rng(0).random((10, 12, 4)).astype(np.float32), AFFINE)
    nib.save(img, str(src))
    layers = get_reader(str(src))(str(src))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image" and data.shape == (4, 12, 10) and kwargs["name"] == "scan"
    np.testing.assert_allclose(kwargs["scale"], [2.0, 1.25, 0.75])
    assert kwargs["metadata"]["source"] == str(src) and kwargs["metadata"]["affine"].shape == (4, 4)

    mask = (data > 0.5).astype(np.uint8)
    meta = {"name": "scan labels", "scale": kwargs["scale"], "metadata": kwargs["metadata"]}
    out = tmp_path / "mask.nii.gz"
    assert write_labels(str(out), mask, meta) == [str(out)]
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(written.dataobj), mask.transpose(2, 1, 0))


def test_h5_reader_gives_labels_layer(tmp_path):
    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((3, 8, 9), np.float32)
        f["label"] = np.ones((3, 8, 9), np.uint8)
    layers = get_reader(str(path))(str(path))
    assert [k for *_, k in layers] == ["image", "labels"]
    assert layers[1][0].shape == (3, 8, 9) and layers[1][1]["scale"] == (1.0, 1.0, 1.0)


def test_tif_writer_uses_scale(tmp_path):
    mask = np.zeros((3, 5, 6), np.uint8)
    mask[1, 2, 3] = 2
    out = tmp_path / "m.tif"
    write_labels(str(out), mask, {"name": "labels", "scale": (8.0, 1.5, 1.5), "metadata": {}})
    np.testing.assert_array_equal(tifffile.imread(out), mask)
    layers = get_reader(str(out))(str(out))
    np.testing.assert_allclose(layers[0][1]["scale"], (8.0, 1.5, 1.5))


def test_sample_data_has_only_three_labeled_slices():
    layers = make_sample_data()
    (image, ikw, ikind), (labels, lkw, lkind) = layers
    assert (ikind, lkind) == ("image", "labels")
    assert ikw["name"] == "cardiac phantom" and lkw["name"] == "labels"
    vol = make_cardiac_phantom()
    picked = sample_labeled_slices(vol)
    assert np.flatnonzero(labels.any(axis=(1, 2))).tolist() == picked
    np.testing.assert_array_equal(labels[picked], vol.labels[picked])
    assert ikw["scale"] == vol.spacing and lkw["metadata"]["class_names"][1] == "RV"


def test_manifest():
    npe2 = pytest.importorskip("npe2")
    path = Path(__file__).resolve().parents[1] / "src" / "napari_samatch" / "napari.yaml"
    mf = npe2.PluginManifest.from_file(path)
    assert mf.name == "napari-samatch" and mf.display_name == "SAM-Match"
    c = mf.contributions
    assert c.readers[0].command == "napari-samatch.get_reader"
    assert c.writers[0].command == "napari-samatch.write_labels"
    assert c.sample_data[0].command == "napari-samatch.make_sample_data"
    assert [w.display_name for w in c.widgets] == ["Data", "Train", "Review", "Cohort"]
    commands = {cmd.id: cmd.python_name for cmd in c.commands}
    assert commands["napari-samatch.train_widget"] == "napari_samatch._widgets:TrainWidget"
    assert commands["napari-samatch.cohort_widget"] == "napari_samatch._widgets:CohortWidget"
