"""Hostile inputs, second round (issue 16): the table of refusals. Masks from other tools, the tracebacks
that remained, and what was misleading or silent (data loss: ``test_bad_input_data_loss.py``). Same
machinery as ``test_bad_input.py`` (``bad_input_helpers.check_row``: the project's error, key words, one
line, the folder byte-identical after the refused action). Sibling files: ``test_bad_input_outputs.py``
(every ``--out`` equal to every input, the files written), ``test_bad_input_accepted.py`` (what is accepted,
and how it is said), ``test_bad_input_permissions.py`` (files the user may not read).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from bad_input_helpers import (
    CLI,
    TINY,
    Table,
    check_row,
    cli,
    image_folder,
    img,
    labels,
    model_file,
    nifti,
    run_folder,
    ssl4mis_root,
    volume_files,
)
from napari_samatch.core.checkpoint import load_checkpoint
from napari_samatch.core.data.io import read_label, read_volume
from napari_samatch.core.errors import CheckpointError, DataError

table = Table()
case = table.case


# ------------------------------------------------------------------------------------------ masks from other tools
@case("cli-train-mask-with-values-0-and-200", CLI, "values 0, 200", "0 (background) to 63", "0/255")
def _(tmp):
    image, lab = volume_files(tmp, labels(value=200))
    return cli(["train", "--image", image, "--labels", lab, "--out", tmp / "run", *TINY])


@case("cli-train-mask-with-many-values", CLI, "hold the values", "(300 values)", "classes 0, 1, 2")
def _(tmp):
    lab = np.arange(4 * 32 * 32, dtype=np.uint16).reshape(4, 32, 32) % 300
    image, lab_path = volume_files(tmp, lab)
    return cli(["train", "--image", image, "--labels", lab_path, "--out", tmp / "run", *TINY])


@case("reader-mask-flipped-nifti-grid", DataError, "different grids", "axes differ", "re-export the mask")
def _(tmp):
    vol = read_volume(nifti(tmp / "ct.nii.gz", img((32, 32, 4))))
    mask = nifti(tmp / "mask.nii.gz", labels().transpose(2, 1, 0), np.diag([-1.0, 1, 1, 1]))
    return lambda: read_label(mask, like=vol)


@case("reader-mask-shifted-nifti-grid", DataError, "different grids", "origins differ", "[5.0, 0.0, 0.0]")
def _(tmp):
    vol = read_volume(nifti(tmp / "ct.nii.gz", img((32, 32, 4))))
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    mask = nifti(tmp / "mask.nii.gz", labels().transpose(2, 1, 0), shifted)
    return lambda: read_label(mask, like=vol)


@case("cli-train-mask-on-another-grid", CLI, "different grids")
def _(tmp):
    image = nifti(tmp / "ct.nii.gz", img((32, 32, 4)))
    mask = nifti(tmp / "mask.nii.gz", labels().transpose(2, 1, 0), np.diag([1.0, -1, 1, 1]))
    return cli(["train", "--image", image, "--labels", mask, "--out", tmp / "run", *TINY])


@case("reader-mask-tiff-other-voxel-size", DataError, "voxel size", "same grid")
def _(tmp):
    tifffile.imwrite(tmp / "img.tif", img(), imagej=True, resolution=(1.0, 1.0), metadata={"spacing": 2.0})
    tifffile.imwrite(tmp / "lab.tif", labels(), imagej=True, resolution=(2.0, 2.0), metadata={"spacing": 2.0})
    vol = read_volume(tmp / "img.tif")
    return lambda: read_label(tmp / "lab.tif", like=vol)


@case("cli-train-class-names-fewer-than-the-labels", CLI, "hold class 2", "give 2 classes", "at least 3")
def _(tmp):
    image, lab = volume_files(tmp, labels(value=2))
    return cli(["train", "--image", image, "--labels", lab, "--set", 'class_names=["background", "heart"]',
                "--out", tmp / "run", *TINY])


@case("cli-train-num-classes-against-class-names", CLI, "class_names", "one name per class")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    return cli(["train", "--image", image, "--labels", lab, "--set", "num_classes=3",
                "--set", 'class_names=["background", "heart"]', "--out", tmp / "run", *TINY])


@case("cli-train-folder-one-class-name", CLI, "'num_classes' = 1", "2..64")
def _(tmp):
    return cli(["train", "--folder", image_folder(tmp), "--set", 'class_names=["background"]', "--out",
                tmp / "run", *TINY])


@case("cli-train-ssl4mis-fewer-classes-than-the-labels", CLI, "hold class 3", "at least 4")
def _(tmp):
    root = ssl4mis_root(tmp, classes=4)
    return cli(["train", "--ssl4mis", root, "--labeled", "2", "--set", "num_classes=2", "--out", tmp / "run", *TINY])


# ------------------------------------------------------------------------------------------ tracebacks
for _axis in ("5", "-4", "3"):
    case(f"cli-predict-axis-{_axis}", CLI, f"axis {_axis} does not exist", "use 0..2")(
        lambda tmp, axis=_axis: cli(["predict", "--model", model_file(tmp), "--image", volume_files(tmp, labels())[0],
                                     "--axis", axis, "--out", tmp / "p.nii.gz"]))


@case("cli-predict-axis-2-on-a-2d-image", CLI, "axis 2 does not exist", "2D")
def _(tmp):
    Image.fromarray((img((32, 32)) * 255).astype(np.uint8)).save(tmp / "us.png")
    return cli(["predict", "--model", model_file(tmp), "--image", tmp / "us.png", "--axis", "2",
                "--out", tmp / "p.png"])


@case("cli-train-axis-5", CLI, "axis 5 does not exist")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    return cli(["train", "--image", image, "--labels", lab, "--axis", "5", "--out", tmp / "run", *TINY])


@case("cli-train-ssl4mis-limit-0", CLI, "--limit 0 keeps no slice", "at least 1")
def _(tmp):
    return cli(["train", "--ssl4mis", ssl4mis_root(tmp), "--limit", "0", "--out", tmp / "run", *TINY])


@case("cli-train-ssl4mis-limit-negative", CLI, "--limit -3 keeps no slice")
def _(tmp):
    return cli(["train", "--ssl4mis", ssl4mis_root(tmp), "--limit", "-3", "--out", tmp / "run", *TINY])


@case("cli-train-ssl4mis-labeled-0", CLI, "--labeled 0 labels no slice")
def _(tmp):
    return cli(["train", "--ssl4mis", ssl4mis_root(tmp), "--labeled", "0", "--out", tmp / "run", *TINY])


@case("cli-train-ssl4mis-lazy-limit-0", CLI, "--limit 0 keeps no slice")
def _(tmp):
    return cli(["train", "--ssl4mis", ssl4mis_root(tmp), "--lazy", "--limit", "0", "--out", tmp / "run", *TINY])


for _seed in (str(2**64 + 1), str(2**63), "-1"):
    case(f"cli-train-seed-{_seed[:6]}", CLI, "'seed'", "2**63 - 1")(
        lambda tmp, seed=_seed: cli(["train", "--image", volume_files(tmp, labels())[0], "--labels",
                                     tmp / "labels.tif", "--out", tmp / "r", *TINY, "--seed", seed]))


@case("cli-train-size-beyond-4096", CLI, "'size' = 8192", "at most 4096")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    return cli(["train", "--image", image, "--labels", lab, "--out", tmp / "run", *TINY, "--size", "8192"])


@case("cli-train-threads-absurd", CLI, "'threads'")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    return cli(["train", "--image", image, "--labels", lab, "--out", tmp / "run", *TINY, "--threads", "100000"])


@case("cli-train-config-is-a-folder", CLI, "does not exist", ".json or .toml")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    (tmp / "cfg.json").mkdir()
    return cli(["train", "--image", image, "--labels", lab, "--config", tmp / "cfg.json", "--out", tmp / "run", *TINY])


@case("cli-evaluate-split-is-not-text", CLI, "cannot be read", "one id a line")
def _(tmp):
    root = ssl4mis_root(tmp)
    (root / "bin.list").write_bytes(b"\xff\xfe\x00\x81" * 10)
    return cli(["evaluate", "--model", model_file(tmp), "--data", root, "--split", "bin.list"])


# ------------------------------------------------------------------------------------------ misleading or silent
@case("cli-train-resume-from-model-pt", CLI, "exported model", "resume from", "last.pt")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    folder = run_folder(tmp)
    (folder / "last.pt").write_bytes(b"")  # the run's own checkpoint exists: the sentence names it
    return cli(["train", "--image", image, "--labels", lab, "--resume", folder / "model.pt", "--out", tmp / "r2",
                *TINY])


@case("cli-train-resume-from-a-folder-without-last-pt", CLI, "is a folder without last.pt", "model.pt")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    folder = run_folder(tmp)
    return cli(["train", "--image", image, "--labels", lab, "--resume", folder, "--out", tmp / "r2", *TINY])


@case("cli-predict-model-is-a-folder-without-model", CLI, "is a folder without model.pt", "run/model.pt")
def _(tmp):
    image, _ = volume_files(tmp, labels())
    (tmp / "empty-run").mkdir()
    return cli(["predict", "--model", tmp / "empty-run", "--image", image, "--out", tmp / "p.nii.gz"])


@case("cli-predict-out-empty", CLI, "file name is empty")
def _(tmp):
    image, _ = volume_files(tmp, labels())
    return cli(["predict", "--model", model_file(tmp), "--image", image, "--out", ""])


@case("cli-predict-image-is-a-folder", CLI, "is a folder; give an image file")
def _(tmp):
    (tmp / "scans").mkdir()
    return cli(["predict", "--model", model_file(tmp), "--image", tmp / "scans", "--out", tmp / "p.nii.gz"])


@case("core-load-checkpoint-of-a-folder", CheckpointError, "is a folder", "last.pt", "model.pt")
def _(tmp):
    return lambda: load_checkpoint(tmp)


@case("cli-train-folder-and-image", CLI, "one data source", "--folder and --image")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    return cli(["train", "--folder", image_folder(tmp), "--image", image, "--labels", lab, "--out", tmp / "run", *TINY])


@case("cli-train-ssl4mis-and-folder", CLI, "one data source", "--ssl4mis and --folder")
def _(tmp):
    return cli(["train", "--ssl4mis", ssl4mis_root(tmp), "--folder", image_folder(tmp), "--out", tmp / "run", *TINY])


@case("cli-train-labels-with-folder", CLI, "--labels applies only with --image", "not with --folder")
def _(tmp):
    _, lab = volume_files(tmp, labels())
    return cli(["train", "--folder", image_folder(tmp), "--labels", lab, "--out", tmp / "run", *TINY])


@case("cli-train-limit-with-image", CLI, "--limit applies only with --ssl4mis")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    return cli(["train", "--image", image, "--labels", lab, "--limit", "2", "--out", tmp / "run", *TINY])


@case("cli-train-axis-with-folder", CLI, "--axis applies only with --image")
def _(tmp):
    return cli(["train", "--folder", image_folder(tmp), "--axis", "1", "--out", tmp / "run", *TINY])


@case("cli-train-checkpoint-dir-setting", CLI, "checkpoint_dir is --out", "give --out instead")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    return cli(["train", "--image", image, "--labels", lab, "--set", f"checkpoint_dir={tmp / 'ck'}", "--out",
                tmp / "run", *TINY])


@case("cli-train-folder-all-masks-empty", CLI, "All 2 masks", "are empty", "nothing to learn")
def _(tmp):
    return cli(["train", "--folder", image_folder(tmp, empty_masks=True), "--out", tmp / "run", *TINY])


@case("cli-train-folder-all-images-blank", CLI, "All 2 images", "single value (0)")
def _(tmp):
    return cli(["train", "--folder", image_folder(tmp, constant=True), "--out", tmp / "run", *TINY])


@case("cli-train-all-zero-image", CLI, "single value (0)", "nothing to segment")
def _(tmp):
    image, lab = volume_files(tmp, labels(), image=np.zeros((4, 32, 32), np.float32))
    return cli(["train", "--image", image, "--labels", lab, "--out", tmp / "run", *TINY])


@case("cli-evaluate-2-class-model-on-4-class-data", CLI, "hold class 3", "model has 2 classes")
def _(tmp):
    return cli(["evaluate", "--model", model_file(tmp), "--data", ssl4mis_root(tmp, classes=4)])


@pytest.mark.parametrize("make,error,words", table.rows)
def test_bad_input_files(tmp_path: Path, make, error, words) -> None:
    check_row(tmp_path, make, error, words)


def test_table_size():
    assert len(table.rows) >= 35
