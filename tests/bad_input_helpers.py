"""Shared by the bad-input tables (``test_bad_input.py``, ``test_bad_input_engine.py``,
``test_bad_input_files.py``, ``test_bad_input_data_loss.py``): how a row is registered and checked, and the
small files the rows are built from.

A row builds its input in a temp folder and returns the action that must fail; ``check_row`` checks that
the error is the project's own type (for the CLI: exit status 2 and one ``napari-samatch: ...`` line on
stderr, no traceback), that the message holds the row's key words, and that the folder holds exactly what
it held before the action: no half-written output, no temp file, no input changed (sizes and bytes).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path
from typing import Callable

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_samatch.cli import main
from napari_samatch.core.checkpoint import save_checkpoint
from napari_samatch.core.config import RunConfig
from napari_samatch.core.data.slices import SliceSet
from napari_samatch.core.data.volume import Volume
from napari_samatch.core.errors import SamatchError
from napari_samatch.core.match.unet import UNet

torch.set_num_threads(1)
CLI = "cli"  # expected "error" of rows that run napari_samatch.cli.main


class Table:
    """The rows of one table: ``@table.case(id, error, *words)`` registers one, ``table.rows`` parametrizes."""

    def __init__(self) -> None:
        self.rows: list = []

    def case(self, id: str, error, *words: str, xfail: str | None = None):
        """``error`` is the expected exception class (or CLI); ``words`` must all be in the message."""
        def deco(make: Callable[[Path], Callable[[], object]]):
            marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
            self.rows.append(pytest.param(make, error, words, id=id, marks=marks))
            return make
        return deco


def listing(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with its content hash (folders: 'dir'), symbolic links not followed."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = "link -> " + str(p.readlink())
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[key] = "dir"
    return out


def check_row(tmp: Path, make, error, words) -> str:
    """Run one row: the action fails as promised and leaves ``tmp`` as it was; returns the message."""
    action = make(tmp)
    before = listing(tmp)
    if error == CLI:
        rc, err = action()
        assert rc == 2, err
        assert "Traceback" not in err
        message = err.strip().splitlines()[-1]
        assert message.startswith("napari-samatch: "), err
    else:
        with pytest.raises(error) as info:
            action()
        assert isinstance(info.value, SamatchError)
        message = str(info.value)
    for word in words:
        assert word.lower() in message.lower(), message
    assert "\n" not in message and len(message) < 1200, message
    assert listing(tmp) == before, "the failed action left files behind or changed one"
    return message


# ------------------------------------------------------------------------------------------ inputs
def img(shape=(4, 32, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def labels(shape=(4, 32, 32), value=1, slices=(1,)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8 if value < 256 else np.uint16)
    for z in slices:
        lab[z, 8:20, 10:22] = value
    return lab


def nifti(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


def h5(path: Path, **datasets_) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in datasets_.items():
            f[k] = v
    return path


def truncated(path: Path) -> Path:
    arr = img((4, 16, 16))
    name = path.name
    if name.endswith((".nii", ".nii.gz")):
        nifti(path, arr)
    elif name.endswith(".tif"):
        tifffile.imwrite(path, arr)
    elif name.endswith(".h5"):
        h5(path, image=arr)
    else:
        Image.fromarray((arr[0] * 255).astype(np.uint8)).save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def volume_files(tmp: Path, lab: np.ndarray, image: np.ndarray | None = None) -> tuple[Path, Path]:
    path = tmp / "img.tif"
    tifffile.imwrite(path, img(lab.shape) if image is None else image)
    lab_path = tmp / "labels.tif"
    tifffile.imwrite(lab_path, lab)
    return path, lab_path


def config(num_classes=2, **kw) -> RunConfig:
    base = dict(method="supervised", warmup_iters=0, sam_iters=0, joint_iters=2, size=32, batch_labeled=1,
                batch_unlabeled=1, eval_every=0, checkpoint_every=0, device="cpu", num_classes=num_classes,
                class_names=["background"] + [f"c{i}" for i in range(1, num_classes)])
    return RunConfig(**{**base, **kw})


def model_file(tmp: Path, config_classes=2, unet_classes=2, name: str = "model.pt") -> Path:
    """An exported model (the shape ``export_model`` writes), optionally with a mismatched UNet."""
    path = tmp / name
    save_checkpoint(path, {"kind": "model", "config": config(config_classes).to_dict(),
                           "unet": UNet(1, unet_classes).state_dict(), "best": {}, "history": []})
    return path


def slice_set(num_classes=2) -> SliceSet:
    return SliceSet.from_volume(Volume(img(), labels(), name="v"), num_classes=num_classes)


def cli(argv: list) -> Callable[[], tuple[int, str]]:
    """An action running the CLI with ``argv``: returns its exit status and what it wrote on stderr."""
    def run() -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main([str(a) for a in argv])
        return rc, err.getvalue()
    return run


TINY = ["--method", "supervised", "--warmup-iters", "0", "--sam-iters", "0", "--joint-iters", "1", "--size", "32",
        "--device", "cpu", "--batch-labeled", "1", "--batch-unlabeled", "1", "--eval-every", "0", "--threads", "1",
        "--quiet"]  # a training run of one step, for rows that must get past the checks


# ------------------------------------------------------------------------------------------ folders
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
