"""Hostile inputs, second round (issue 16): refusals that keep data from being lost. An output onto an input
(the same file, through a symbolic or hard link or a linked folder, the model), an earlier result replaced
without ``--overwrite``, and the docks' writers onto the image they came from.

Same machinery as ``test_bad_input.py`` (``bad_input_helpers.check_row``: the project's error, key words, one
line, the folder byte-identical after the refused action). Every command with ``--out`` equal to each of its
inputs, and the files written, are ``test_bad_input_outputs.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_input_helpers import (
    CLI,
    TINY,
    Table,
    check_row,
    cli,
    img,
    labels,
    model_file,
    nifti,
    run_folder,
    ssl4mis_root,
    volume_files,
)
from napari_samatch._writer import write_labels
from napari_samatch.core.data.io import read_volume
from napari_samatch.core.data.writers import write_mask
from napari_samatch.core.errors import DataError, StorageError

table = Table()
case = table.case


# ------------------------------------------------------------------------------------------ data loss
@case("cli-predict-out-is-the-image", CLI, "is the input --image", "destroy", "choose another --out")
def _(tmp):
    model = model_file(tmp)
    image = nifti(tmp / "ct.nii.gz", img((32, 32, 4)))
    return cli(["predict", "--model", model, "--image", image, "--out", image])


@case("cli-predict-out-is-the-image-with-overwrite", CLI, "is the input --image", "nothing was written")
def _(tmp):
    model = model_file(tmp)
    image = nifti(tmp / "ct.nii.gz", img((32, 32, 4)))
    return cli(["predict", "--model", model, "--image", image, "--out", image, "--overwrite"])


@case("cli-predict-out-is-a-link-to-the-image", CLI, "through a link", "the input --image")
def _(tmp):
    model = model_file(tmp)
    image = nifti(tmp / "ct.nii.gz", img((32, 32, 4)))
    (tmp / "alias.nii.gz").symlink_to(image)
    return cli(["predict", "--model", model, "--image", image, "--out", tmp / "alias.nii.gz"])


@case("cli-predict-out-is-a-hard-link-to-the-image", CLI, "the input --image")
def _(tmp):
    model = model_file(tmp)
    image = nifti(tmp / "ct.nii.gz", img((32, 32, 4)))
    os.link(image, tmp / "hard.nii.gz")
    return cli(["predict", "--model", model, "--image", image, "--out", tmp / "hard.nii.gz"])


@case("cli-predict-out-is-the-image-through-a-linked-folder", CLI, "the input --image")
def _(tmp):
    model = model_file(tmp)
    (tmp / "data").mkdir()
    image = nifti(tmp / "data" / "ct.nii.gz", img((32, 32, 4)))
    (tmp / "view").symlink_to(tmp / "data")
    return cli(["predict", "--model", model, "--image", image, "--out", tmp / "view" / "ct.nii.gz"])


@case("cli-predict-png-out-is-the-2d-image", CLI, "the input --image")
def _(tmp):
    model = model_file(tmp)
    Image.fromarray((img((32, 32)) * 255).astype(np.uint8)).save(tmp / "us.png")
    return cli(["predict", "--model", model, "--image", tmp / "us.png", "--out", tmp / "us.png"])


@case("cli-predict-out-is-the-model", CLI, "the input --model")
def _(tmp):
    model = model_file(tmp)
    image, _ = volume_files(tmp, labels())
    return cli(["predict", "--model", model, "--image", image, "--out", model])


@case("cli-predict-out-exists", CLI, "already exists", "--overwrite")
def _(tmp):
    model = model_file(tmp)
    image, _ = volume_files(tmp, labels())
    (tmp / "mask.nii.gz").write_bytes(b"an earlier mask")
    return cli(["predict", "--model", model, "--image", image, "--out", tmp / "mask.nii.gz"])


@case("cli-predict-png-folder-holds-earlier-slices", CLI, "already exists", "--overwrite")
def _(tmp):
    model = model_file(tmp)
    image, _ = volume_files(tmp, labels())
    (tmp / "pngs").mkdir()
    (tmp / "pngs" / "img_0002.png").write_bytes(b"an earlier slice")
    return cli(["predict", "--model", model, "--image", image, "--out", tmp / "pngs"])


@case("cli-train-out-holds-an-earlier-run", CLI, "holds an earlier run", "model.pt", "--overwrite")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    run_folder(tmp)
    return cli(["train", "--image", image, "--labels", lab, "--out", tmp / "run", *TINY])


@case("cli-train-resume-from-another-run-into-an-earlier-run", CLI, "holds an earlier run", "--overwrite")
def _(tmp):
    image, lab = volume_files(tmp, labels())
    run_folder(tmp, "old")
    (tmp / "other").mkdir()
    (tmp / "other" / "last.pt").write_bytes(b"x")
    return cli(["train", "--image", image, "--labels", lab, "--resume", tmp / "other" / "last.pt",
                "--out", tmp / "old", *TINY])


@case("cli-evaluate-out-exists", CLI, "already exists", "--overwrite")
def _(tmp):
    root = ssl4mis_root(tmp)
    (tmp / "scores.json").write_text('{"earlier": 1}')
    return cli(["evaluate", "--model", model_file(tmp), "--data", root, "--out", tmp / "scores.json"])


@case("cli-demo-out-holds-an-earlier-demo", CLI, "holds an earlier run", "demo.json", "--overwrite")
def _(tmp):
    (tmp / "demo").mkdir()
    (tmp / "demo" / "demo.json").write_text("{}")
    return cli(["demo", "--out", tmp / "demo", "--fast", "--device", "cpu", "--quiet"])


@case("dock-save-labels-over-the-image-it-came-from", DataError, "is the input image", "destroy")
def _(tmp):
    image = nifti(tmp / "ct.nii.gz", img((32, 32, 4)))
    meta = {"name": "labels", "metadata": {"source": str(image), "affine": np.eye(4)}}
    return lambda: write_labels(str(image), labels(), meta)


@case("dock-export-masks-over-the-image-through-a-link", DataError, "through a link", "is the input image")
def _(tmp):
    vol = read_volume(nifti(tmp / "ct.nii.gz", img((32, 32, 4))))
    (tmp / "alias.nii.gz").symlink_to(tmp / "ct.nii.gz")
    return lambda: write_mask(tmp / "alias.nii.gz", labels(vol.shape), like=vol)


@case("core-write-mask-no-overwrite", StorageError, "already exists")
def _(tmp):
    (tmp / "m.tif").write_bytes(b"earlier")
    return lambda: write_mask(tmp / "m.tif", labels(), overwrite=False)


@pytest.mark.parametrize("make,error,words", table.rows)
def test_bad_input_data_loss(tmp_path: Path, make, error, words) -> None:
    check_row(tmp_path, make, error, words)


def test_table_size():
    assert len(table.rows) >= 15
