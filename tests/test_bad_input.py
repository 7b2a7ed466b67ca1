"""Bad input where it enters: the readers, the CLI and the dock-facing core.

One table per topic; this file: the readers, the CLI and what the docks call (the engine, its checkpoints,
SAM weights and the run's settings: ``test_bad_input_engine.py``). Each row builds its input in a temp folder
and returns the action that must fail; the test checks the error is the project's own type (``SamatchError``
subclasses; for the CLI: exit status 2 and one ``napari-samatch: ...`` line on stderr, no traceback), that the
message names the problem and the fix (key words), and that the folder holds exactly what it held before the
action: no half-written output, no temp file left behind.

Every row passes; rows that once failed were fixed in the module where the input enters. The row machinery
and the small input files are shared with ``test_bad_input_files.py`` and the other bad-input tables
(``bad_input_helpers.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from bad_input_helpers import CLI, Table, check_row
from bad_input_helpers import cli as _cli
from bad_input_helpers import h5 as _h5
from bad_input_helpers import img as _img
from bad_input_helpers import labels as _labels
from bad_input_helpers import model_file as _model_file
from bad_input_helpers import nifti as _nifti
from bad_input_helpers import truncated as _truncated
from bad_input_helpers import volume_files as _volume_files
from napari_samatch._reader import read_layers
from napari_samatch._writer import write_labels
from napari_samatch.core.data.io import read_label, read_volume
from napari_samatch.core.data.session import SessionState, load_session, save_session
from napari_samatch.core.data.slices import SliceSet
from napari_samatch.core.data.volume import Volume, to_single_channel
from napari_samatch.core.errors import DataError, StorageError

_table = Table()
CASES, case = _table.rows, _table.case


# ------------------------------------------------------------------------------------------ readers
for _ext in (".nii.gz", ".tif", ".h5", ".png"):
    case(f"reader-truncated-{_ext.strip('.')}", DataError, "truncated or corrupt", "Supported formats")(
        lambda tmp, ext=_ext: (lambda p=_truncated(tmp / f"cut{ext}"): read_volume(p)))


@case("reader-nifti-4d-cine", DataError, "4D", "one 3D frame per file")
def _(tmp):
    p = _nifti(tmp / "cine.nii.gz", _img((8, 8, 3, 2)))
    return lambda: read_volume(p)


@case("reader-tiff-4d", DataError, "4 dimensions", "single channel")
def _(tmp):
    tifffile.imwrite(tmp / "t.tif", _img((2, 3, 8, 9)))
    return lambda: read_volume(tmp / "t.tif")


@case("reader-h5-rgb-volume-4d", DataError, "4 dimensions", "one channel")
def _(tmp):
    p = _h5(tmp / "rgb.h5", image=_img((3, 8, 9, 3)))
    return lambda: read_volume(p)


@case("reader-h5-complex", DataError, "complex", "magnitude")
def _(tmp):
    p = _h5(tmp / "c.h5", image=np.ones((8, 9), np.complex64))
    return lambda: read_volume(p)


@case("reader-nifti-complex", DataError, "complex", "magnitude", "cx.nii.gz")
def _(tmp):
    p = _nifti(tmp / "cx.nii.gz", np.ones((8, 9, 3), np.complex64))
    return lambda: read_volume(p)


@case("reader-h5-boolean-image", DataError, "boolean", "labels")
def _(tmp):
    p = _h5(tmp / "b.h5", image=np.ones((8, 9), bool))
    return lambda: read_volume(p)


@case("reader-h5-empty-image", DataError, "empty", "holds pixels")
def _(tmp):
    p = _h5(tmp / "e.h5", image=np.ones((0, 9), np.float32))
    return lambda: read_volume(p)


@case("reader-nifti-nan", DataError, "NaN", "nan_to_num")
def _(tmp):
    a = _img((8, 9, 3))
    a[1, 2, 0] = np.nan
    p = _nifti(tmp / "nan.nii.gz", a)
    return lambda: read_volume(p)


@case("reader-tiff-inf", DataError, "Inf", "nan_to_num")
def _(tmp):
    a = _img((8, 9))
    a[0, 0] = np.inf
    tifffile.imwrite(tmp / "inf.tif", a)
    return lambda: read_volume(tmp / "inf.tif")


@case("reader-h5-label-shape-mismatch", DataError, "(4, 6)", "(4, 5)", "must match")
def _(tmp):
    p = _h5(tmp / "l.h5", image=_img((4, 5)), label=np.ones((4, 6), np.uint8))
    return lambda: read_volume(p)


@case("reader-mask-shape-mismatch", DataError, "shape", "pick the mask that belongs")
def _(tmp):
    tifffile.imwrite(tmp / "m.tif", np.zeros((3, 4), np.uint8))
    like = Volume(_img((4, 4)), name="img")
    return lambda: read_label(tmp / "m.tif", like=like)


@case("reader-mask-fractional-values", DataError, "non-integer", "Round or threshold")
def _(tmp):
    p = _nifti(tmp / "soft.nii.gz", np.full((5, 6, 3), 0.5, np.float32))
    return lambda: read_label(p)


@case("reader-missing-file", DataError, "does not exist", "check the path")
def _(tmp):
    return lambda: read_volume(tmp / "nope.nii.gz")


@case("reader-h5-without-image", DataError, "no 'image'", "SSL4MIS layout")
def _(tmp):
    p = _h5(tmp / "x.h5", data=np.zeros(3))
    return lambda: read_volume(p)


# ------------------------------------------------------------------------------------------------ CLI
@case("cli-train-image-missing", CLI, "does not exist", "check the path")
def _(tmp):
    return _cli(["train", "--image", tmp / "nope.nii.gz", "--labels", tmp / "nope_labels.nii.gz",
                 "--out", tmp / "run"])


@case("cli-train-no-data-source", CLI, "Say what to train on", "--image FILE --labels FILE")
def _(tmp):
    return _cli(["train", "--out", tmp / "run"])


@case("cli-train-unknown-setting", CLI, "Unknown setting", "warmup_itres")
def _(tmp):
    img, lab = _volume_files(tmp, _labels())
    return _cli(["train", "--image", img, "--labels", lab, "--set", "warmup_itres=5", "--out", tmp / "run"])


@case("cli-train-size-out-of-range", CLI, "'size' = 33", "multiple of 16")
def _(tmp):
    img, lab = _volume_files(tmp, _labels())
    return _cli(["train", "--image", img, "--labels", lab, "--size", "33", "--out", tmp / "run"])


@case("cli-train-single-labeled-class", CLI, "only class 1", "background")
def _(tmp):
    lab = np.zeros((4, 32, 32), np.uint8)
    lab[2] = 1
    img, lab_path = _volume_files(tmp, lab)
    return _cli(["train", "--image", img, "--labels", lab_path, "--out", tmp / "run"])


@case("cli-train-resume-corrupt-checkpoint", CLI, "refused", "corrupt", "copy the file again")
def _(tmp):
    img, lab = _volume_files(tmp, _labels())
    (tmp / "last.pt").write_bytes(np.random.default_rng(1).bytes(3000))
    return _cli(["train", "--image", img, "--labels", lab, "--resume", tmp / "last.pt", "--out", tmp / "run"])


@case("cli-train-out-under-a-regular-file", CLI, "is a file, not a folder", "another folder")
def _(tmp):
    img, lab = _volume_files(tmp, _labels())
    (tmp / "afile").write_text("x")
    return _cli(["train", "--image", img, "--labels", lab, "--out", tmp / "afile" / "run", "--method", "supervised",
                 "--warmup-iters", "1", "--sam-iters", "0", "--joint-iters", "0", "--size", "32", "--device", "cpu",
                 "--batch-labeled", "1", "--quiet"])


@case("cli-predict-model-wrong-architecture", CLI, "does not fit", "model.pt")
def _(tmp):
    model = _model_file(tmp, config_classes=2, unet_classes=4)
    img, _ = _volume_files(tmp, _labels())
    return _cli(["predict", "--model", model, "--image", img, "--out", tmp / "pred.nii.gz"])


@case("cli-predict-out-under-a-regular-file", CLI, "is a file, not a folder", "choose another folder")
def _(tmp):
    model = _model_file(tmp)
    img, _ = _volume_files(tmp, _labels())
    (tmp / "afile").write_text("x")
    return _cli(["predict", "--model", model, "--image", img, "--out", tmp / "afile" / "pred.nii.gz"])


@case("cli-predict-image-corrupt", CLI, "truncated or corrupt", "Supported formats")
def _(tmp):
    model = _model_file(tmp)
    _truncated(tmp / "cut.nii.gz")
    return _cli(["predict", "--model", model, "--image", tmp / "cut.nii.gz", "--out", tmp / "pred.nii.gz"])


@case("cli-evaluate-data-missing", CLI, "is not a folder", "SSL4MIS")
def _(tmp):
    model = _model_file(tmp)
    return _cli(["evaluate", "--model", model, "--data", tmp / "no-such-dir"])


# ------------------------------------------------------------------------- what the docks call
@case("dock-open-corrupt-file", DataError, "truncated or corrupt", "Supported formats")
def _(tmp):
    p = _truncated(tmp / "cut.tif")
    return lambda: read_layers(str(p))


@case("dock-save-labels-under-a-regular-file", StorageError, "is a file, not a folder")
def _(tmp):
    (tmp / "afile").write_text("x")
    return lambda: write_labels(str(tmp / "afile" / "labels.nii.gz"), _labels(), {"name": "labels"})


@case("dock-boolean-image-layer", DataError, "boolean", "labels")
def _(tmp):
    return lambda: to_single_channel(np.ones((4, 8, 8), bool), rgb=False)


@case("dock-rgb-layer-with-two-channels", DataError, "3 (RGB) or 4 (RGBA)")
def _(tmp):
    return lambda: to_single_channel(np.ones((8, 8, 2), np.uint8), rgb=True)


@case("dock-nan-image-to-slices", DataError, "non-finite", "nan_to_num")
def _(tmp):
    img = _img()
    img[2, 3, 3] = np.nan
    vol = Volume(img, _labels(), name="v")
    return lambda: SliceSet.from_volume(vol, num_classes=2)


@case("dock-labels-layer-other-shape", DataError, "(5, 32, 32)", "(4, 32, 32)", "voxel for voxel")
def _(tmp):
    vol = Volume(_img(), _labels((5, 32, 32)), name="v")
    return lambda: SliceSet.from_volume(vol, num_classes=2)


@case("dock-session-save-under-a-regular-file", StorageError, "session folder", "Choose a folder")
def _(tmp):
    (tmp / "afile").write_text("x")
    return lambda: save_session(tmp / "afile" / "s.samatch", SessionState(labels=_labels()))


@case("dock-session-names-a-file-outside", DataError, "outside its folder", "not a napari-samatch session")
def _(tmp):
    import json

    save_session(tmp / "s", SessionState(labels=_labels()))
    doc = json.loads((tmp / "s" / "session.json").read_text())
    doc["files"]["labels"]["path"] = "../secret.npy"
    (tmp / "s" / "session.json").write_text(json.dumps(doc))
    np.save(tmp / "secret.npy", np.zeros(3))
    return lambda: load_session(tmp / "s")


@case("dock-session-labels-tampered", DataError, "recorded hash", "backup")
def _(tmp):
    save_session(tmp / "s", SessionState(labels=_labels()))
    f = next((tmp / "s").glob("labels.*.npy"))
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    return lambda: load_session(tmp / "s")


# ------------------------------------------------------------------------------------------ the test
@pytest.mark.parametrize("make,error,words", CASES)
def test_bad_input(tmp_path: Path, make, error, words) -> None:
    check_row(tmp_path, make, error, words)


def test_table_size() -> None:
    assert len(CASES) >= 30
