"""Reading and writing: round-trips, the real BUSI/ACDC layouts, bad input, atomic writes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_samatch.core.data import io
from napari_samatch.core.data.io import (
    read_image_folder,
    read_label,
    read_ssl4mis_slices,
    read_ssl4mis_volumes,
    read_volume,
)
from napari_samatch.core.data.volume import Volume
from napari_samatch.core.data.writers import write_mask
from napari_samatch.core.errors import DataError, StorageError

# A rotated, sheared, anisotropic, translated affine: any axis mix-up changes the world mapping.
AFFINE = np.array([[0.0, -1.2, 0.1, 10.0], [0.9, 0.0, 0.0, -5.0], [0.0, 0.2, 3.5, 2.0], [0, 0, 0, 1]])


def _nifti(path, shape=(20, 30, 7), affine=AFFINE, qcode=1):
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qcode)
    nib.save(img, str(path))
    return data


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nifti_affine_and_spacing_round_trip(tmp_path, ext):
    src = tmp_path / f"img{ext}"
    data = _nifti(src)
    vol = read_volume(src)
    assert vol.shape == (7, 30, 20)  # (X, Y, Z) -> (Z, Y, X)
    assert vol.image[2, 5, 3] == data[3, 5, 2]
    zooms = nib.load(str(src)).header.get_zooms()
    np.testing.assert_allclose(vol.spacing, zooms[::-1])
    # Our affine maps our (z, y, x) index to the same world point as NIfTI's (i, j, k) = (x, y, z).
    np.testing.assert_allclose(vol.affine @ [2, 5, 3, 1], AFFINE @ [3, 5, 2, 1])

    mask = (vol.image > 0.5).astype(np.uint8) * 3
    out = tmp_path / f"mask{ext}"
    assert write_mask(out, mask, like=vol) == [out]
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, nib.load(str(src)).affine)
    np.testing.assert_allclose(written.header.get_zooms(), zooms, rtol=1e-6)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), mask.transpose(2, 1, 0))
    back = read_volume(out)
    np.testing.assert_allclose(back.affine, vol.affine)
    np.testing.assert_allclose(back.spacing, vol.spacing)
    np.testing.assert_array_equal(read_label(out, like=vol), mask)


def test_nifti_2d_and_defaults(tmp_path):
    _nifti(tmp_path / "flat.nii.gz", shape=(6, 5), affine=np.diag([2.0, 3.0, 1.0, 1.0]))
    vol = read_volume(tmp_path / "flat.nii.gz")
    assert vol.shape == (5, 6) and vol.spacing == (3.0, 2.0)
    write_mask(tmp_path / "m.nii.gz", np.ones((5, 6), np.uint8), like=vol)
    np.testing.assert_allclose(nib.load(str(tmp_path / "m.nii.gz")).affine, np.diag([2.0, 3.0, 1.0, 1.0]))
    # No affine: spacing-scaled diagonal in NIfTI order; no like at all: identity.
    like = Volume(np.zeros((3, 4, 5), np.float32), spacing=(8.0, 1.5, 1.25))
    write_mask(tmp_path / "s.nii", np.zeros((3, 4, 5), np.uint8), like=like)
    np.testing.assert_allclose(nib.load(str(tmp_path / "s.nii")).affine, np.diag([1.25, 1.5, 8.0, 1.0]))
    write_mask(tmp_path / "i.nii", np.zeros((3, 4, 5), np.uint8))
    np.testing.assert_allclose(nib.load(str(tmp_path / "i.nii")).affine, np.eye(4))


def test_nifti_4d_rejected_but_singleton_time_ok(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3, 2), np.float32), np.eye(4)), str(tmp_path / "cine.nii.gz"))
    with pytest.raises(DataError, match="one 3D frame"):
        read_volume(tmp_path / "cine.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3, 1), np.float32), np.eye(4)), str(tmp_path / "one.nii.gz"))
    assert read_volume(tmp_path / "one.nii.gz").shape == (3, 5, 4)


@pytest.mark.parametrize("shape", [(9, 11), (3, 9, 11)])
def test_tiff_round_trip(tmp_path, shape):
    img = np.random.default_rng(1).random(shape).astype(np.float32)
    tifffile.imwrite(tmp_path / "img.tif", img)
    vol = read_volume(tmp_path / "img.tif")
    np.testing.assert_array_equal(vol.image, img)
    assert vol.spacing is None
    mask = (img > 0.5).astype(np.uint8)
    write_mask(tmp_path / "mask.tiff", mask)
    np.testing.assert_array_equal(read_label(tmp_path / "mask.tiff", like=vol), mask)
    # With a known spacing the mask is an ImageJ TIFF that carries the pixel size.
    vol.spacing = (4.0, 0.5, 0.25)[-len(shape):]
    write_mask(tmp_path / "mask_sp.tif", mask, like=vol)
    back = read_volume(tmp_path / "mask_sp.tif")
    np.testing.assert_allclose(back.spacing, vol.spacing)
    np.testing.assert_array_equal(back.image, mask)


def test_rgb_tiff_and_png_become_luminance(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    expected = rgb @ np.array([0.299, 0.587, 0.114])
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((10, 12), 9, np.uint8)])).save(tmp_path / "rgba.png")
    for name in ("rgb.tif", "rgb.png", "rgba.png"):
        vol = read_volume(tmp_path / name)
        assert vol.shape == (10, 12) and vol.image.dtype == np.float32
        np.testing.assert_allclose(vol.image, expected, rtol=1e-5, atol=1e-3)


def test_png_per_slice(tmp_path):
    mask = np.random.default_rng(3).integers(0, 4, (3, 6, 7)).astype(np.uint8)
    like = Volume(np.zeros(mask.shape, np.float32), name="heart")
    files = write_mask(tmp_path / "out", mask, like=like)  # folder is created
    assert [f.name for f in files] == ["heart_0000.png", "heart_0001.png", "heart_0002.png"]
    np.testing.assert_array_equal(read_label(tmp_path / "out", like=like), mask)
    files = write_mask(tmp_path / "seg.png", mask)
    assert [f.name for f in files] == ["seg_0000.png", "seg_0001.png", "seg_0002.png"]
    files = write_mask(tmp_path / "p_{}_x.png", mask)
    assert files[2].name == "p_0002_x.png"
    np.testing.assert_array_equal(np.asarray(Image.open(files[2])), mask[2])
    assert write_mask(tmp_path / "one.png", mask[0]) == [tmp_path / "one.png"]
    big = np.zeros((6, 7), np.int32)
    big[0, 0] = 300  # > 255 classes -> 16 bit
    write_mask(tmp_path / "big.png", big)
    assert read_label(tmp_path / "big.png").max() == 300


@pytest.mark.parametrize("shape", [(8, 9), (3, 8, 9)])
def test_ssl4mis_h5(tmp_path, shape):
    img = np.random.default_rng(4).random(shape).astype(np.float32)
    lab = (img > 0.7).astype(np.uint8) * 2
    with h5py.File(tmp_path / "case.h5", "w") as f:
        f.create_dataset("image", data=img, compression="gzip")
        f.create_dataset("label", data=lab, compression="gzip")
    vol = read_volume(tmp_path / "case.h5")
    np.testing.assert_array_equal(vol.image, img)
    np.testing.assert_array_equal(vol.labels, lab)
    np.testing.assert_array_equal(read_label(tmp_path / "case.h5", like=vol), lab)
    with h5py.File(tmp_path / "nolabel.h5", "w") as f:
        f["image"] = img
    assert read_volume(tmp_path / "nolabel.h5").labels is None
    with pytest.raises(DataError, match="no 'label'"):
        read_label(tmp_path / "nolabel.h5")


def test_busi_folder(shared_data):
    busi = shared_data / "Dataset_BUSI_with_GT"
    if not busi.is_dir():
        pytest.skip(f"BUSI sample not found at {busi}")
    vols = read_image_folder(busi)
    assert vols[0].name == "benign (1)" and vols[-1].metadata["category"] == "normal"
    assert len(vols) == len([p for p in busi.rglob("*.png") if "_mask" not in p.name])
    benign = [v.name for v in vols if v.metadata["category"] == "benign"]
    assert benign.index("benign (2)") < benign.index("benign (10)") < benign.index("benign (100)")
    keys = [(v.metadata["category"], v.name) for v in vols]
    assert keys == sorted(keys, key=lambda k: (io.natural_key(k[0]), io.natural_key(k[1])))  # deterministic
    assert {v.metadata["category"] for v in vols} == {"benign", "malignant", "normal"}
    for v in vols:
        assert v.image.ndim == 2 and v.image.dtype == np.float32
        assert v.labels is not None and v.labels.shape == v.shape and set(np.unique(v.labels)) <= {0, 1}
    multi = next(v for v in vols if len(v.metadata["mask_files"]) > 1)
    union = np.zeros(multi.shape, bool)
    for f in multi.metadata["mask_files"]:
        m = np.asarray(Image.open(f))
        union |= (m[..., :3].max(-1) if m.ndim == 3 else m) > 0
    np.testing.assert_array_equal(multi.labels, union)
    assert all(not v.labels.any() for v in vols if v.metadata["category"] == "normal")


def test_image_folder_unmasked_and_orphans(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((4, 5), 10, np.uint8)).save(tmp_path / "a" / "x (10).png")
    Image.fromarray(np.full((4, 5), 20, np.uint8)).save(tmp_path / "a" / "x (2).png")
    Image.fromarray(np.full((4, 5), 255, np.uint8)).save(tmp_path / "a" / "x (2)_mask.png")
    Image.fromarray(np.full((4, 5), 255, np.uint8)).save(tmp_path / "a" / "lost_mask.png")
    with pytest.warns(UserWarning, match="no matching image"):
        vols = read_image_folder(tmp_path)
    assert [v.name for v in vols] == ["x (2)", "x (10)"]
    assert vols[0].labels.all() and vols[1].labels is None
    with pytest.raises(DataError, match="not a folder"):
        read_image_folder(tmp_path / "a" / "x (2).png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="Found no images"):
        read_image_folder(tmp_path / "empty")


def test_ssl4mis_readers_on_real_acdc(tmp_path, acdc):
    ids = (acdc / "val.list").read_text().split()[:2]
    (tmp_path / "two.list").write_text("\n".join(ids) + "\n")
    vols = read_ssl4mis_volumes(acdc, str(tmp_path / "two.list"))
    assert [v.name for v in vols] == ids
    assert all(v.image.ndim == 3 and v.labels.shape == v.shape for v in vols)
    slices = read_ssl4mis_slices(acdc, limit=5)
    first = (acdc / "train_slices.list").read_text().split()[0]
    assert len(slices) == 5 and slices[0].name == first and slices[0].image.ndim == 2
    assert slices[0].metadata["group"] == first.rpartition("_slice_")[0]


# ------------------------------------------------------------------------------------ bad input
def _corrupt(path: Path, how: str) -> Path:
    if how == "random":
        path.write_bytes(np.random.default_rng(5).bytes(4000))
    elif how == "empty":
        path.write_bytes(b"")
    else:  # a real file cut in half
        img = np.random.default_rng(6).random((16, 16, 4)).astype(np.float32)
        name = path.name
        if name.endswith((".nii", ".nii.gz")):
            nib.save(nib.Nifti1Image(img, np.eye(4)), str(path))
        elif name.endswith(".tif"):
            tifffile.imwrite(path, img)
        elif name.endswith(".h5"):
            with h5py.File(path, "w") as f:
                f["image"] = img
        else:
            Image.fromarray((img[..., 0] * 255).astype(np.uint8)).save(path)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    return path


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".tif", ".h5", ".png", ".jpg"])
@pytest.mark.parametrize("how", ["random", "empty", "truncated"])
def test_corrupt_files_raise_data_error(tmp_path, ext, how):
    path = _corrupt(tmp_path / f"bad{ext}", how)
    with pytest.raises(DataError) as err:
        read_volume(path)
    assert "bad" in str(err.value) and "Supported formats" in str(err.value)


BAD_INPUT = [
    ("unknown extension", "scan.xyz", "unsupported file type"),
    ("missing file", "nope.nii.gz", "does not exist"),
    ("h5 without image", "noimage.h5", "no 'image'"),
    ("colour mask", "colour.png", "colour image"),
]


@pytest.mark.parametrize("case,name,needle", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_table(tmp_path, case, name, needle):
    path = tmp_path / name
    if case == "unknown extension":
        path.write_bytes(b"abc")
    elif case == "h5 without image":
        with h5py.File(path, "w") as f:
            f["data"] = np.zeros(3)
    elif case == "colour mask":
        green = np.zeros((4, 4, 3), np.uint8)
        green[..., 1] = 1
        Image.fromarray(green).save(path)
    with pytest.raises(DataError) as err:
        (read_label if case == "colour mask" else read_volume)(path)
    assert needle in str(err.value) and name in str(err.value)


def test_label_shape_mismatch(tmp_path):
    write_mask(tmp_path / "m.tif", np.zeros((3, 4), np.uint8))
    with pytest.raises(DataError, match="shape"):
        read_label(tmp_path / "m.tif", like=Volume(np.zeros((4, 4), np.float32)))
    with pytest.raises(DataError, match="must match"):
        write_mask(tmp_path / "m2.tif", np.zeros((3, 4), np.uint8), like=Volume(np.zeros((4, 4), np.float32)))
    with pytest.raises(DataError, match="unsupported|Cannot write"):
        write_mask(tmp_path / "m.jpg", np.zeros((3, 4), np.uint8))


# ---------------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("target", ["m.nii.gz", "m.tif", "slices.png"])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, target):
    (tmp_path / "keep.txt").write_text("old")

    def half_then_full_disk(*args, **kwargs):
        Path(str(args[1] if target.endswith(".nii.gz") else args[0])).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    if target.endswith(".nii.gz"):
        monkeypatch.setattr(nib, "save", lambda img, fn: half_then_full_disk(img, fn))
    elif target.endswith(".tif"):
        monkeypatch.setattr(tifffile, "imwrite", half_then_full_disk)
    else:
        monkeypatch.setattr(Image.Image, "save", lambda self, fn, **kw: half_then_full_disk(fn))
    with pytest.raises(StorageError, match="disk is full"):
        write_mask(tmp_path / target, np.ones((2, 4, 4), np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_existing_file_survives_failed_write(tmp_path, monkeypatch):
    out = tmp_path / "m.tif"
    write_mask(out, np.ones((4, 4), np.uint8))
    before = out.read_bytes()
    monkeypatch.setattr(tifffile, "imwrite", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        write_mask(out, np.zeros((4, 4), np.uint8))
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["m.tif"]


def test_storage_errors(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        write_mask(tmp_path / "missing" / "m.nii.gz", np.ones((4, 4), np.uint8))
    with pytest.raises(StorageError, match="does not exist"):
        write_mask(tmp_path / "missing" / "sub" / "dir", np.ones((4, 4), np.uint8))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root: permissions are not enforced")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="permission"):
            write_mask(ro / "m.tif", np.ones((4, 4), np.uint8))
    finally:
        ro.chmod(0o700)


def test_file_kind():
    assert io.file_kind("a/B.NII.GZ") == "nifti" and io.file_kind("x.tiff") == "tiff"
    assert io.file_kind("x.h5") == "h5" and io.file_kind("x.bmp") == "image2d" and io.file_kind("x.gz") is None
