"""Your files are safe (issue 16): every CLI command with ``--out`` equal to each of its inputs, the docks'
exports onto their image, ``--overwrite`` for earlier results, and the files written (umask, a killed
writer's temp file, no empty folder after a refused write).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from bad_input_helpers import (
    TINY,
    cli,
    image_folder,
    img,
    labels,
    listing,
    model_file,
    nifti,
    ssl4mis_root,
    volume_files,
)
from napari_samatch import cli as cli_mod
from napari_samatch.core.checkpoint import atomic_write_bytes, atomic_write_json, load_checkpoint
from napari_samatch.core.data.writers import write_mask
from napari_samatch.core.errors import DataError, StorageError


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
    cohort = tmp / "cohort"
    cohort.mkdir()
    nifti(cohort / "case1.nii.gz", img((32, 32, 4)))
    return {"image": image, "labels": lab, "cohort": cohort, "ssl4mis": root, "folder": image_folder(tmp), "config": config,
            "resume": last, "sam": sam, "model": model_file(tmp), "nifti": nifti(tmp / "ct.nii.gz", img((32, 32, 4))),
            "split": root / "val.list", "volume": root / "data" / "vol0.h5"}


def _argv(command: str, flag: str, p: dict[str, Path]) -> tuple[list, Path]:
    """``command`` with its inputs, ``--out`` equal to the input of ``flag``; returns argv and that input."""
    if command == "train":
        source = {"--ssl4mis": ["--ssl4mis", p["ssl4mis"]], "--folder": ["--folder", p["folder"]],
                  "--images": ["--images", p["cohort"]]}.get(
            flag, ["--image", p["image"], "--labels", p["labels"]])
        extra = {"--resume": ["--resume", p["resume"]], "--config": ["--config", p["config"]],
                 "--sam-checkpoint": ["--sam-checkpoint", p["sam"]]}.get(flag, [])
        target = {"--ssl4mis": p["ssl4mis"], "--folder": p["folder"], "--image": p["image"], "--labels": p["labels"],
                  "--images": p["cohort"],
                  "--resume": p["resume"], "--config": p["config"], "--sam-checkpoint": p["sam"]}[flag]
        return ["train", *source, *extra, "--out", target, *TINY], target
    if command == "predict":
        if flag == "--images":
            return ["predict", "--model", p["model"], "--images", p["cohort"], "--out", p["cohort"]], p["cohort"]
        target = {"--model": p["model"], "--image": p["nifti"]}[flag]
        return ["predict", "--model", p["model"], "--image", p["nifti"], "--out", target], target
    target = {"--model": p["model"], "--data": p["ssl4mis"], "--split": p["split"], "a listed volume": p["volume"]}[flag]
    return ["evaluate", "--model", p["model"], "--data", p["ssl4mis"], "--out", target], target


INPUT_FLAGS = {"train": ["--ssl4mis", "--folder", "--image", "--images", "--labels", "--resume", "--config",
                         "--sam-checkpoint"],
               "predict": ["--model", "--image", "--images"], "evaluate": ["--model", "--data", "--split", "a listed volume"],
               "demo": []}
OTHER_FLAGS = {"--out", "--overwrite", "--help", "--labeled", "--limit", "--lazy", "--no-lazy", "--axis", "--preset",
               "--method", "--warmup-iters", "--sam-iters", "--joint-iters", "--size", "--batch-labeled",
               "--batch-unlabeled", "--sam-mode", "--sam-backend", "--device", "--threads", "--seed", "--eval-every",
               "--set", "--quiet", "--fast", "--val-slices", "--labels-complete", "-h"}


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
