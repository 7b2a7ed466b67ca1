"""Hostile inputs, second round (issue 16): the user's files are never destroyed, masks from other tools, the
tracebacks that remained, and what was misleading or silent. Same table as ``test_bad_input.py``
(``bad_input_helpers.check_row``: the project's error, key words, one line, the folder byte-identical).

Then, outside the table, what a row cannot express: every CLI command with ``--out`` equal to each of its
input flags; what the files written look like (umask, a killed writer's temp file, no empty run folder);
what is accepted and how it is said (0/255 masks, class names, Z=1 runs, warnings under ``--quiet``).
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_samatch import cli as cli_mod
from napari_samatch._writer import write_labels
from napari_samatch.core import datasets
from napari_samatch.core import events as ev
from napari_samatch.core.checkpoint import atomic_write_bytes, atomic_write_json, load_checkpoint
from napari_samatch.core.config import preset
from napari_samatch.core.errors import CheckpointError, ConfigError, DataError, DataWarning, StorageError
from napari_samatch.core.export import load_model
from napari_samatch.core.io import read_label, read_volume, write_mask

from bad_input_helpers import CLI, TINY, Table, check_row, cli, h5, img, labels, listing, model_file, nifti, \
    truncated, volume_files

table = Table()
case = table.case


# ------------------------------------------------------------------------------------------ builders
def ssl4mis_root(tmp: Path, classes: int = 2, slices: int = 3, volumes: int = 1) -> Path:
    """A tiny SSL4MIS-layout folder: ``train_slices.list`` of 2D slices and ``val.list`` of 3D volumes."""
    root = tmp / "acdc"
    (root / "data" / "slices").mkdir(parents=True)
    ids = []
    for i in range(slices):
        lab = labels((1, 32, 32), value=classes - 1, slices=(0,))[0]
        lab[2:6, 2:6] = 1
        h5(root / "data" / "slices" / f"v_slice_{i}.h5", image=img((32, 32), seed=i), label=lab)
        ids.append(f"v_slice_{i}")
    (root / "train_slices.list").write_text("\n".join(ids) + "\n")
    vids = []
    for v in range(volumes):
        lab = labels((3, 32, 32), value=classes - 1, slices=(0, 1, 2))
        lab[:, 2:6, 2:6] = 1
        h5(root / "data" / f"vol{v}.h5", image=img((3, 32, 32), seed=10 + v), label=lab)
        vids.append(f"vol{v}")
    (root / "val.list").write_text("\n".join(vids) + "\n")
    return root


def image_folder(tmp: Path, empty_masks: bool = False, constant: bool = False) -> Path:
    """A BUSI-layout folder: two 2D images with ``*_mask.png`` masks."""
    root = tmp / "busi"
    root.mkdir()
    for i in range(2):
        pixels = np.zeros((32, 32), np.uint8) if constant else (img((32, 32), seed=i) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"case ({i}).png")
        mask = np.zeros((32, 32), np.uint8)
        if not empty_masks:
            mask[8:20, 8:20] = 255
        Image.fromarray(mask).save(root / f"case ({i})_mask.png")
    return root


def run_folder(tmp: Path, name: str = "run") -> Path:
    """A folder as ``train --out`` leaves it: model.pt (+ sidecar) and metrics.json."""
    folder = tmp / name
    folder.mkdir()
    model_file(folder)
    (folder / "metrics.json").write_text("{}")
    return folder


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


# ------------------------------------------------------------------------------------------ reading permissions
def _refuse_reading(monkeypatch, victim: Path) -> None:
    """Tests run as root, where modes stop nothing: ``open`` of ``victim`` for reading raises EACCES."""
    real_open, real_read_bytes = builtins.open, Path.read_bytes

    def fake_open(file, mode="r", *a, **kw):
        if "r" in mode and os.path.realpath(file) == os.path.realpath(victim):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, mode, *a, **kw)

    def fake_read_bytes(self):
        if os.path.realpath(self) == os.path.realpath(victim):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_read_bytes(self)

    def fake_read_text(self, *a, **kw):
        fake_read_bytes(self)
        return real_read_text(self, *a, **kw)

    real_read_text = Path.read_text
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(Path, "read_bytes", fake_read_bytes)
    monkeypatch.setattr(Path, "read_text", fake_read_text)


@pytest.mark.parametrize("what", ["--model", "--image", "--image-h5", "--labels", "--config", "--resume"])
def test_a_file_the_user_may_not_read_is_said_so(tmp_path, monkeypatch, what):
    image, lab = volume_files(tmp_path, labels())
    model = model_file(tmp_path)
    config = tmp_path / "run.json"
    config.write_text("{}")
    h5_image = h5(tmp_path / "v.h5", image=img())
    (tmp_path / "old").mkdir()
    last = tmp_path / "old" / "last.pt"
    last.write_bytes(model.read_bytes())
    argv = {"--model": ["predict", "--model", model, "--image", image, "--out", tmp_path / "p.nii.gz"],
            "--image": ["predict", "--model", model, "--image", image, "--out", tmp_path / "p.nii.gz"],
            "--image-h5": ["predict", "--model", model, "--image", h5_image, "--out", tmp_path / "p.nii.gz"],
            "--labels": ["train", "--image", image, "--labels", lab, "--out", tmp_path / "run", *TINY],
            "--config": ["train", "--image", image, "--labels", lab, "--config", config, "--out", tmp_path / "run",
                         *TINY],
            "--resume": ["train", "--image", image, "--labels", lab, "--resume", last, "--out", tmp_path / "run",
                         *TINY]}[what]
    victim = {"--model": model, "--image": image, "--image-h5": h5_image, "--labels": lab, "--config": config,
              "--resume": last}[what]
    before = listing(tmp_path)
    _refuse_reading(monkeypatch, victim)
    rc, err = cli(argv)()
    monkeypatch.undo()
    message = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err, err
    assert str(victim) in message and ("permission" in message.lower() or "cannot be read" in message), message
    assert "truncated or corrupt" not in message
    assert listing(tmp_path) == before


# ------------------------------------------------------------------------------------------ --out = an input
def _inputs(tmp: Path) -> dict[str, Path]:
    """One of every input the CLI reads, built in ``tmp``."""
    image, lab = volume_files(tmp, labels())
    root = ssl4mis_root(tmp)
    config = tmp / "run.json"
    config.write_text("{}")
    (tmp / "prev").mkdir()
    last = tmp / "prev" / "last.pt"
    last.write_bytes(b"not read: --out is refused first")
    sam = tmp / "sam.pth"
    sam.write_bytes(b"not read either")
    return {"image": image, "labels": lab, "ssl4mis": root, "folder": image_folder(tmp), "config": config,
            "resume": last, "sam": sam, "model": model_file(tmp), "nifti": nifti(tmp / "ct.nii.gz", img((32, 32, 4))),
            "split": root / "val.list", "volume": root / "data" / "vol0.h5"}


def _argv(command: str, flag: str, p: dict[str, Path]) -> tuple[list, Path]:
    """``command`` with its inputs, ``--out`` equal to the input of ``flag``; returns argv and that input."""
    if command == "train":
        source = {"--ssl4mis": ["--ssl4mis", p["ssl4mis"]], "--folder": ["--folder", p["folder"]]}.get(
            flag, ["--image", p["image"], "--labels", p["labels"]])
        extra = {"--resume": ["--resume", p["resume"]], "--config": ["--config", p["config"]],
                 "--sam-checkpoint": ["--sam-checkpoint", p["sam"]]}.get(flag, [])
        target = {"--ssl4mis": p["ssl4mis"], "--folder": p["folder"], "--image": p["image"], "--labels": p["labels"],
                  "--resume": p["resume"], "--config": p["config"], "--sam-checkpoint": p["sam"]}[flag]
        return ["train", *source, *extra, "--out", target, *TINY], target
    if command == "predict":
        target = {"--model": p["model"], "--image": p["nifti"]}[flag]
        return ["predict", "--model", p["model"], "--image", p["nifti"], "--out", target], target
    target = {"--model": p["model"], "--data": p["ssl4mis"], "--split": p["split"], "a listed volume": p["volume"]}[flag]
    return ["evaluate", "--model", p["model"], "--data", p["ssl4mis"], "--out", target], target


INPUT_FLAGS = {"train": ["--ssl4mis", "--folder", "--image", "--labels", "--resume", "--config", "--sam-checkpoint"],
               "predict": ["--model", "--image"], "evaluate": ["--model", "--data", "--split", "a listed volume"],
               "demo": []}
OTHER_FLAGS = {"--out", "--overwrite", "--help", "--labeled", "--limit", "--lazy", "--no-lazy", "--axis", "--preset",
               "--method", "--warmup-iters", "--sam-iters", "--joint-iters", "--size", "--batch-labeled",
               "--batch-unlabeled", "--sam-mode", "--sam-backend", "--device", "--threads", "--seed", "--eval-every",
               "--set", "--quiet", "--fast", "-h"}


def test_every_path_flag_of_every_command_is_covered():
    """A new flag that reads a file must join INPUT_FLAGS (and so the test below)."""
    parser = cli_mod.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == set(INPUT_FLAGS)
    for name, sub in commands.items():
        flags = {s for action in sub._actions for s in action.option_strings}
        assert flags - OTHER_FLAGS == {f for f in INPUT_FLAGS[name] if f.startswith("--")}, name


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "with-overwrite"])
@pytest.mark.parametrize("command,flag", [(c, f) for c, flags in INPUT_FLAGS.items() for f in flags])
def test_out_equal_to_an_input_is_refused_and_the_input_is_unchanged(tmp_path, command, flag, overwrite):
    p = _inputs(tmp_path)
    argv, target = _argv(command, flag, p)
    before = listing(tmp_path)
    rc, err = cli(argv + (["--overwrite"] if overwrite else []))()
    message = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err, err
    assert "is the input" in message and str(target) in message, message
    assert listing(tmp_path) == before  # every byte of every input, and nothing new


def test_demo_has_no_input_to_protect_but_keeps_an_earlier_demo(tmp_path):
    (tmp_path / "demo").mkdir()
    model_file(tmp_path / "demo")
    before = listing(tmp_path)
    rc, err = cli(["demo", "--out", tmp_path / "demo", "--fast", "--quiet"])()
    assert rc == 2 and "holds an earlier run (model.pt)" in err and listing(tmp_path) == before


# ------------------------------------------------------------------------------------------ files written
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_written_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "new" / "metrics.json", b"{}")
        written = write_mask(tmp_path / "m.nii.gz", labels())
        written += write_mask(tmp_path / "m.tif", labels())
        written += write_mask(tmp_path / "pngs", labels())
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    for path in [tmp_path / "new" / "metrics.json", tmp_path / "x.json", *written]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    for folder in (tmp_path / "new", tmp_path / "pngs"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder


def test_cli_outputs_respect_the_umask(tmp_path):
    image, lab = volume_files(tmp_path, labels())
    old = os.umask(0o027)
    try:
        assert cli(["train", "--image", image, "--labels", lab, "--out", tmp_path / "run", *TINY])()[0] == 0
        assert cli(["predict", "--model", tmp_path / "run", "--image", image, "--out", tmp_path / "p.nii.gz"])()[0] == 0
    finally:
        os.umask(old)
    for path in [*(tmp_path / "run").iterdir(), tmp_path / "p.nii.gz"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


@pytest.mark.parametrize("name", ["mask.nii.gz", "mask.tif", "mask.png"])
def test_a_killed_mask_writers_temp_file_is_removed_by_the_next_write(tmp_path, name):
    ext = ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix
    dead = tmp_path / f".{name}.999999999.k2j4.tmp{ext}"  # beyond any PID: its writer is gone
    mine = tmp_path / f".{name}.{os.getpid()}.q7x1.tmp{ext}"  # this process: a write may be in flight
    other = tmp_path / f".other{ext}.999999999.a1.tmp{ext}"  # another target's: not this write's to judge
    for p in (dead, mine, other):
        p.write_bytes(b"half a mask")
    write_mask(tmp_path / name, labels()[1] if name.endswith(".png") else labels())
    assert not dead.exists() and mine.exists() and other.exists()


def test_a_refused_train_out_leaves_no_empty_run_folder(tmp_path, monkeypatch):
    """The disk is full for every file bigger than 4 KiB: the final checkpoint is refused, and the run folder
    the run had created is removed again (the status is 2 with the disk-full sentence)."""
    image, lab = volume_files(tmp_path, labels())
    real = os.fsync

    def fsync(fd):
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_size > 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rc, err = cli(["train", "--image", image, "--labels", lab, "--out", tmp_path / "new" / "run", *TINY])()
    assert rc == 2 and "No space left on device" in err and "Traceback" not in err, err
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif", "labels.tif"]


def test_overwrite_replaces_an_earlier_run_and_resuming_in_its_folder_needs_no_flag(tmp_path):
    image, lab = volume_files(tmp_path, labels())
    train = ["train", "--image", image, "--labels", lab, "--out", tmp_path / "run", *TINY]
    assert cli(train)()[0] == 0
    first = (tmp_path / "run" / "model.pt").read_bytes()
    assert cli(train)()[0] == 2 and (tmp_path / "run" / "model.pt").read_bytes() == first
    assert cli([*train, "--overwrite", "--seed", "7"])()[0] == 0
    assert (tmp_path / "run" / "model.pt").read_bytes() != first
    rc, err = cli([*train, "--resume", tmp_path / "run" / "last.pt", "--joint-iters", "2"])()
    assert rc == 0, err
    rc, err = cli([*train, "--resume", tmp_path / "run", "--joint-iters", "3"])()  # the folder stands for last.pt
    assert rc == 0, err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["joint_iters"] == 3
    # and predict: an existing mask only with --overwrite; a run folder stands for its model.pt
    predict = ["predict", "--model", tmp_path / "run", "--image", image, "--out", tmp_path / "p.tif"]
    assert cli(predict)()[0] == 0
    assert cli(predict)()[0] == 2
    assert cli([*predict, "--overwrite"])()[0] == 0


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


def test_quiet_hides_progress_but_not_warnings(capsys):
    printer = cli_mod._progress_printer(quiet=True)
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


def test_table_size():
    assert len(table.rows) >= 50


def test_an_ssl4mis_slice_the_user_may_not_read_is_said_so(tmp_path, monkeypatch):
    """h5py reports a refused open as a plain OSError ('errno = 13'): still a permission sentence."""
    import h5py

    root = ssl4mis_root(tmp_path)
    real = h5py.File

    def refuse(name, *a, **kw):
        if str(name).endswith("v_slice_1.h5"):
            raise OSError(f"Unable to synchronously open file (unable to open file: name = '{name}', errno = 13, "
                          "error message = 'Permission denied', flags = 0, o_flags = 0)")
        return real(name, *a, **kw)

    monkeypatch.setattr(h5py, "File", refuse)
    rc, err = cli(["train", "--ssl4mis", root, "--labeled", "2", "--out", tmp_path / "run", *TINY])()
    assert rc == 2 and "No permission to read" in err and "v_slice_1.h5" in err and "corrupt" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_refused_png_folder_write_leaves_no_folder(tmp_path, monkeypatch):
    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError, match="disk is full"):
        write_mask(tmp_path / "pngs", labels())
    assert list(tmp_path.iterdir()) == []


def test_the_docks_exports_never_replace_the_image(tmp_path):
    """The Review dock's mask export and the Train dock's model export, called as the docks call them (a stand-in
    controller: the layers' data, metadata and napari's ``source.path``), onto the image file itself."""
    from types import SimpleNamespace

    from napari_samatch._widgets._sessions import SessionManager

    image = nifti(tmp_path / "ct.nii.gz", img((32, 32, 4)))
    before = listing(tmp_path)
    for md, source in (({"source": str(image)}, None), ({}, SimpleNamespace(path=str(image)))):
        layer = SimpleNamespace(metadata=md, scale=(1.0, 1.0, 1.0), name="ct", source=source)
        ctl = SimpleNamespace(image_layer=layer, labels_layer=SimpleNamespace(data=labels()), engine=object())
        manager = SimpleNamespace(ctl=ctl)
        with pytest.raises(DataError, match="is the input image"):
            SessionManager.export_masks(manager, image, which="user")
        with pytest.raises(DataError, match="is the input image"):
            SessionManager.export_model(manager, image)
    assert listing(tmp_path) == before
