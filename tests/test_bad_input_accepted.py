"""What is accepted, and how it is said (issue 16): masks from other tools read as class 1, class settings
honoured, a run without unlabeled slices that says it trained supervised, warnings under ``--quiet``,
strict JSON, a run folder as ``--model``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from bad_input_helpers import (
    TINY,
    cli,
    h5,
    img,
    labels,
    model_file,
    nifti,
    run_folder,
    ssl4mis_root,
    truncated,
    volume_files,
)
from napari_samatch import console
from napari_samatch.core.checkpoint import atomic_write_json
from napari_samatch.core.config import preset
from napari_samatch.core.data import datasets
from napari_samatch.core.data.io import read_label, read_volume
from napari_samatch.core.engine import events as ev
from napari_samatch.core.engine.export import load_model
from napari_samatch.core.errors import ConfigError, DataError, DataWarning


# ------------------------------------------------------------------------------------------ accepted, and said
@pytest.mark.parametrize("top,fmt", [(255, "tif"), (65535, "tif"), (255, "nii.gz-float"), (255, "png-folder"),
                                     (65535, "h5")])
def test_a_binary_mask_from_another_tool_is_read_as_class_1(tmp_path, top, fmt):
    lab = labels(value=top)
    if fmt == "tif":
        tifffile.imwrite(tmp_path / "m.tif", lab)
        path = tmp_path / "m.tif"
    elif fmt == "nii.gz-float":
        path = nifti(tmp_path / "m.nii.gz", lab.transpose(2, 1, 0).astype(np.float32))
    elif fmt == "png-folder":
        (tmp_path / "m").mkdir()
        for z, sl in enumerate(lab):
            Image.fromarray(sl.astype(np.uint8)).save(tmp_path / "m" / f"m_{z:04d}.png")
        path = tmp_path / "m"
    else:
        path = h5(tmp_path / "m.h5", image=img(), label=lab)
    with pytest.warns(DataWarning, match=f"only 0 and {top}"):
        out = read_volume(path).labels if fmt == "h5" else read_label(path)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1} and np.array_equal(out, lab > 0)


def test_cli_trains_on_a_0_255_mask_and_says_so_even_when_quiet(tmp_path):
    image, lab = volume_files(tmp_path, labels(value=255))
    rc, err = cli(["train", "--image", image, "--labels", lab, "--out", tmp_path / "run", *TINY])()
    assert rc == 0, err
    assert "napari-samatch: warning: The mask 'labels.tif' holds only 0 and 255" in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["num_classes"] == 2


def test_a_mask_with_float_noise_in_its_affine_is_on_the_same_grid(tmp_path):
    affine = np.diag([0.7, 0.7, 5.0, 1.0])
    affine[:3, 3] = [-120.5, 80.25, 33.0]
    vol = read_volume(nifti(tmp_path / "ct.nii.gz", img((32, 32, 4)), affine))
    noisy = affine + np.float32(1e-6) * np.ones((4, 4)) * np.array([1, 1, 1, 0])[:, None]
    noisy[3] = [0, 0, 0, 1]
    assert read_label(nifti(tmp_path / "m.nii.gz", labels().transpose(2, 1, 0), noisy), like=vol).shape == vol.shape


def test_class_names_right_for_the_data_are_honoured_against_the_presets_four(tmp_path):
    image, lab = volume_files(tmp_path, labels(value=2))
    names = ["background", "liver", "tumour"]
    rc, err = cli(["train", "--image", image, "--labels", lab, "--set", f"class_names={json.dumps(names)}",
                   "--out", tmp_path / "run", *[a for a in TINY if a != "--quiet"]])()
    assert rc == 0, err
    assert "Classes: 3 (background, liver, tumour), as set; the labeled slices hold 0, 2." in err
    config = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]
    assert config["class_names"] == names and config["num_classes"] == 3
    # more classes than painted so far is honoured too (a class not painted yet)
    assert preset("quick", num_classes=5).class_names == ["background", "class 1", "class 2", "class 3", "class 4"]


def test_with_classes_says_what_the_labels_hold():
    from bad_input_helpers import slice_set

    data, line = datasets.with_classes(slice_set(2))
    assert line == "Classes: 2 (background, class 1), from the labels; the labeled slices hold 0, 1."
    with pytest.raises(ConfigError, match="one name per class"):
        datasets.with_classes(slice_set(2), 3, ["background", "a"])


def test_a_single_slice_run_says_it_trained_supervised(tmp_path):
    image, lab = volume_files(tmp_path, labels((1, 32, 32), slices=(0,)))
    tiny = [a for a in TINY if a not in ("supervised",)]
    tiny[tiny.index("--method") + 1:tiny.index("--method") + 1] = ["unimatch"]
    rc, err = cli(["train", "--image", image, "--labels", lab, "--out", tmp_path / "run", *tiny])()
    assert rc == 0, err
    assert "warning: Every slice is labeled, so unimatch has no unlabeled slice" in err  # under --quiet
    config = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]
    assert config["method"] == "supervised" and config["warmup_method"] == "supervised"


def test_one_painted_slice_trains_and_says_to_paint_a_second(tmp_path):
    image, lab = volume_files(tmp_path, labels((5, 32, 32), slices=(2,)))
    rc, err = cli(["train", "--image", image, "--labels", lab, "--out", tmp_path / "run", *TINY])()
    assert rc == 0, err
    assert "warning: Only one slice is painted" in err and "paint a second slice" in err  # under --quiet
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_quiet_hides_progress_but_not_warnings(capsys):
    printer = console.progress_printer(quiet=True)
    printer(ev.Event(ev.STAGE, message="Stage joint: 3 iterations"))
    printer(ev.Event(ev.LOG, message="Checkpoint of iteration 4 not saved: the disk is full", data={"level": "warning"}))
    out = capsys.readouterr()
    assert "Stage joint" not in out.out + out.err
    assert "napari-samatch: warning: Checkpoint of iteration 4 not saved" in out.err


def test_predict_on_a_blank_image_warns(tmp_path):
    image, _ = volume_files(tmp_path, labels(), image=np.zeros((4, 32, 32), np.float32))
    rc, err = cli(["predict", "--model", model_file(tmp_path), "--image", image, "--out", tmp_path / "p.tif"])()
    assert rc == 0 and "warning: The image holds a single value (0) everywhere" in err


def test_evaluate_writes_strict_json(tmp_path):
    root = ssl4mis_root(tmp_path, volumes=2)
    rc, err = cli(["evaluate", "--model", model_file(tmp_path), "--data", root, "--out", tmp_path / "s.json"])()
    assert rc == 0, err

    def no_constants(name):
        raise AssertionError(f"bare {name} in the JSON")

    result = json.loads((tmp_path / "s.json").read_text(), parse_constant=no_constants)
    assert result["volumes"] == 2
    assert json.loads(json.dumps({"x": float("nan")}, allow_nan=True).replace("NaN", "null")) == {"x": None}
    atomic_write_json(tmp_path / "n.json", {"hd95": float("nan"), "d": np.float32(np.inf), "k": [np.int64(3)]})
    assert json.loads((tmp_path / "n.json").read_text()) == {"hd95": None, "d": None, "k": [3]}


def test_predict_from_a_run_folder_uses_its_model(tmp_path):
    image, _ = volume_files(tmp_path, labels())
    run_folder(tmp_path)
    unet, config = load_model(tmp_path / "run")
    assert config.num_classes == 2
    rc, err = cli(["predict", "--model", tmp_path / "run", "--image", image, "--out", tmp_path / "p.nii.gz"])()
    assert rc == 0 and (tmp_path / "p.nii.gz").is_file(), err


def test_an_unreadable_truncated_image_is_still_truncated(tmp_path):
    """The permission sentence must not hide a real corruption: a readable, cut file says 'truncated'."""
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_volume(truncated(tmp_path / "cut.nii.gz"))
