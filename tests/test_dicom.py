"""DICOM series: small series written here with pydicom (real geometry tags, files out of order) read back as
volumes with their order, values, spacing and affine; bad series refused with a sentence; the CLI on a folder."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from napari_samatch.cli import main  # noqa: E402
from napari_samatch.core.data.dicom import read_dicom_series  # noqa: E402
from napari_samatch.core.data.io import file_kind, read_volume  # noqa: E402
from napari_samatch.core.data.writers import write_mask  # noqa: E402
from napari_samatch.core.errors import DataError  # noqa: E402

ROWS, COLS = 12, 16
PIXEL = (0.8, 0.6)  # PixelSpacing: between rows, between columns
STEP = 2.5
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # normal = row x col = (-1, 0, 0): positions run down in x
ORIGIN = np.array([-30.0, 20.0, -10.0])


def raw_slice(k: int, rows: int = ROWS) -> np.ndarray:
    return (k * 100 + np.arange(rows * COLS).reshape(rows, COLS)).astype(np.uint16)


def dicom_slice(path: Path, k: int, orientation=AXIAL, series: str = "1.2.3.4", rows: int = ROWS,
                position: np.ndarray | None = None, pixels: bool = True) -> None:
    """Slice ``k`` of a series: its position is ``k`` steps along the orientation's normal from ORIGIN."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, k + 1
    normal = np.cross(orientation[:3], orientation[3:])
    pos = ORIGIN + k * STEP * normal if position is None else position
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [float(v) for v in pos]
    ds.PixelSpacing, ds.SliceThickness = list(PIXEL), STEP
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    if pixels:
        ds.Rows, ds.Columns = rows, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = raw_slice(k, rows).tobytes()
    try:
        ds.save_as(str(path), enforce_file_format=True)  # pydicom >= 3
    except TypeError:
        ds.save_as(str(path), write_like_original=False)  # pydicom 2


def write_series(folder: Path, n: int = 5, orientation=AXIAL, skip: tuple[int, ...] = ()) -> Path:
    """``n`` slices written in a shuffled order under names that say nothing of their order."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, k in enumerate(np.random.default_rng(3).permutation(n)):
        if int(k) not in skip:
            dicom_slice(folder / f"IM{(i * 7919) % 1000:04d}", int(k), orientation)
    return folder


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL], ids=["axial", "sagittal"])
def test_series_reads_in_order_with_values_and_geometry(tmp_path, orientation):
    folder = write_series(tmp_path / "ct", orientation=orientation)
    (folder / "DICOMDIR").write_bytes(b"not read")  # skipped on its own, as notes are
    (folder / "notes.txt").write_text("scanned on Tuesday")
    assert file_kind(folder) == "dicom"
    vol = read_volume(folder)
    assert vol.shape == (5, ROWS, COLS) and vol.image.dtype == np.float32 and vol.name == "ct"
    for k in range(5):  # slice k is the k-th along the normal, whatever the file names; rescaled values
        np.testing.assert_array_equal(vol.image[k], raw_slice(k).astype(np.float32) * 2 - 1024)
    assert vol.spacing == pytest.approx((STEP, PIXEL[0], PIXEL[1]))
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    for k, i, j in ((0, 0, 0), (4, 11, 15), (2, 5, 3)):
        lps = ORIGIN + k * STEP * normal + i * PIXEL[0] * col + j * PIXEL[1] * row
        ras = lps * [-1, -1, 1]
        np.testing.assert_allclose((vol.affine @ [k, i, j, 1])[:3], ras, atol=1e-6)


def test_mask_written_as_nifti_keeps_the_series_geometry(tmp_path):
    vol = read_volume(write_series(tmp_path / "mr", orientation=SAGITTAL))
    mask = np.zeros(vol.shape, np.uint8)
    mask[1, 2:5, 3:9] = 1
    write_mask(tmp_path / "mask.nii.gz", mask, like=vol)
    img = nib.load(str(tmp_path / "mask.nii.gz"))
    assert img.shape == (COLS, ROWS, 5)  # NIfTI (i, j, k) = array (x, y, z)
    np.testing.assert_allclose(img.affine @ [3, 2, 1, 1], vol.affine @ [1, 2, 3, 1], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj).T, mask)


def test_single_dcm_file_reads_as_one_image(tmp_path):
    dicom_slice(tmp_path / "one.dcm", 2)
    vol = read_volume(tmp_path / "one.dcm")
    assert vol.shape == (ROWS, COLS) and vol.spacing == pytest.approx(PIXEL)
    np.testing.assert_array_equal(vol.image, raw_slice(2) * 2.0 - 1024)


# ------------------------------------------------------------------------------------------ bad series
def bad_mixed_sizes(folder: Path) -> None:
    write_series(folder, n=4)
    dicom_slice(folder / "odd", 4, rows=10)


def bad_missing_slice(folder: Path) -> None:
    write_series(folder, n=6, skip=(3,))


def bad_stray_file(folder: Path) -> None:
    write_series(folder, n=4)
    (folder / "scanner.bin").write_bytes(bytes(range(256)) * 4)


def bad_no_pixels(folder: Path) -> None:
    write_series(folder, n=4)
    dicom_slice(folder / "report", 9, pixels=False)


def bad_two_series(folder: Path) -> None:
    write_series(folder, n=4)
    dicom_slice(folder / "other", 7, series="9.9.9")


def bad_same_position(folder: Path) -> None:
    write_series(folder, n=4)
    dicom_slice(folder / "echo2", 1, position=ORIGIN + STEP * np.array([0.0, 0.0, 1.0]))


def bad_nothing(folder: Path) -> None:
    folder.mkdir()
    (folder / "notes.txt").write_text("the scans are elsewhere")


BAD = {
    "mixed-sizes": (bad_mixed_sizes, ["different sizes", "12x16", "10x16", "one series per folder"]),
    "missing-slice": (bad_missing_slice, ["misses 1 slice(s)", "5 mm apart where the others are 2.5 mm",
                                          "copy the missing files"]),
    "stray-file": (bad_stray_file, ["'scanner.bin'", "is not a DICOM file", "move it out"]),
    "no-pixels": (bad_no_pixels, ["'report'", "without an image", "move it out"]),
    "two-series": (bad_two_series, ["holds 2 DICOM series", "its own folder"]),
    "same-position": (bad_same_position, ["same position", "one volume per folder"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_series_get_one_clear_sentence(tmp_path, case):
    make, phrases = BAD[case]
    make(tmp_path / "series")
    with pytest.raises(DataError) as info:
        read_volume(tmp_path / "series")
    msg = str(info.value)
    for phrase in phrases:
        assert phrase in msg, msg
    assert msg.endswith(".") and "Traceback" not in msg


def test_folder_without_dicom_says_so(tmp_path):
    bad_nothing(tmp_path / "empty")
    with pytest.raises(DataError, match="is a folder; give an image file, or a folder holding one DICOM series"):
        read_volume(tmp_path / "empty")
    with pytest.raises(DataError, match="holds no DICOM files"):
        read_dicom_series(tmp_path / "empty")
    write_series(tmp_path / "patients" / "p1")
    with pytest.raises(DataError, match="sub-folder.*'p1'.*cohort"):
        read_dicom_series(tmp_path / "patients")


# ------------------------------------------------------------------------------------------ command line
def test_cli_trains_and_predicts_on_a_dicom_folder(tmp_path, capsys):
    folder = write_series(tmp_path / "ct", n=6)
    vol = read_volume(folder)
    labels = np.zeros(vol.shape, np.uint8)
    labels[[1, 4], 3:9, 4:12] = 1
    write_mask(tmp_path / "labels.nii.gz", labels, like=vol)
    run = tmp_path / "run"
    rc = main(["train", "--image", str(folder), "--labels", str(tmp_path / "labels.nii.gz"), "--out", str(run),
               "--method", "supervised", "--warmup-iters", "0", "--sam-iters", "0", "--joint-iters", "2",
               "--size", "32", "--device", "cpu", "--threads", "1", "--eval-every", "0", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "pred.nii.gz"
    assert main(["predict", "--model", str(run / "model.pt"), "--image", str(folder), "--out", str(out)]) == 0
    pred = nib.load(str(out))
    np.testing.assert_allclose(pred.affine @ [0, 0, 0, 1], vol.affine @ [0, 0, 0, 1], atol=1e-5)
    assert pred.shape == (COLS, ROWS, 6)
    # a stray file in the folder: one sentence, exit 2
    (folder / "junk").write_bytes(b"x" * 300)
    assert main(["predict", "--model", str(run / "model.pt"), "--image", str(folder), "--out",
                 str(tmp_path / "p2.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "'junk' in the series folder" in err and "Traceback" not in err


def test_napari_reader_takes_a_series_folder_and_declines_others(tmp_path):
    from napari_samatch._reader import get_reader

    folder = write_series(tmp_path / "ct")
    (tmp_path / "other").mkdir()
    assert get_reader(str(tmp_path / "other")) is None
    layers = get_reader(str(folder))(str(folder))
    (data, kwargs, kind), = layers
    assert kind == "image" and data.shape == (5, ROWS, COLS)
    assert kwargs["scale"] == pytest.approx((STEP, *PIXEL)) and kwargs["metadata"]["affine"] is not None
