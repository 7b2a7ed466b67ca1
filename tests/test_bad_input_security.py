"""Security: a checkpoint that tries to run code is refused by every loader, and never runs.

Loaders: the engine checkpoint (``Engine.from_checkpoint`` / ``load_checkpoint``), the exported model
(``export.load_model``, used by ``predict``/``evaluate`` and the Train dock), the CLI's ``--resume`` and
``predict --model``, a session's stored checkpoint, and the SAM checkpoint path (LiteMedSAM and
segment-anything). Each gets the same malicious files: a ``torch.save`` zip whose pickle calls
``os.system`` (writing a marker file), and a bare protocol-4 pickle doing the same.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_samatch.cli import main
from napari_samatch.core.checkpoint import load_checkpoint, save_checkpoint, sha256_file
from napari_samatch.core.data.session import SessionState, load_session, save_session
from napari_samatch.core.data.slices import SliceSet
from napari_samatch.core.data.volume import Volume
from napari_samatch.core.engine.export import load_model
from napari_samatch.core.errors import CheckpointError, DataError


class _RunsCode:
    """Unpickled unsafely, this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _evil_files(tmp: Path) -> tuple[Path, list[Path]]:
    marker = tmp / "PWNED"
    zip_file = tmp / "evil_zip.pt"
    torch.save({"format": "napari-samatch/1", "unet": {"w": torch.zeros(1)}, "x": _RunsCode(marker)}, zip_file)
    raw = tmp / "evil_raw.pkl"
    raw.write_bytes(pickle.dumps({"model": _RunsCode(marker)}, protocol=4))
    assert not marker.exists()
    return marker, [zip_file, raw]


def _data() -> SliceSet:
    img = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    lab = np.zeros((3, 32, 32), np.uint8)
    lab[1, 5:20, 5:20] = 1
    return SliceSet.from_volume(Volume(img, lab, name="v"), num_classes=2)


def _engine_load(path: Path) -> None:
    from napari_samatch.core.engine.engine import Engine

    Engine.from_checkpoint(path, _data())


def _sam_lite(path: Path) -> None:
    from napari_samatch.core.sam import load_sam

    load_sam("litemedsam", path)


def _sam_vit(path: Path) -> None:
    from napari_samatch.core.sam import load_sam

    load_sam("sam", path, model_type="vit_b")


LOADERS = {"checkpoint": load_checkpoint, "engine-resume": _engine_load, "exported-model": load_model,
           "sam-litemedsam": _sam_lite, "sam-segment-anything": _sam_vit}


@pytest.mark.parametrize("loader", list(LOADERS), ids=list(LOADERS))
def test_code_running_pickle_is_refused_by_every_loader(tmp_path: Path, loader: str) -> None:
    marker, files = _evil_files(tmp_path)
    for path in files:
        with pytest.raises(CheckpointError) as info:
            LOADERS[loader](path)
        msg = str(info.value)
        assert "refused" in msg and ("run" in msg or "code" in msg), msg
        assert "\n" not in msg
    if loader == "checkpoint":  # the zip names what it wanted to run
        with pytest.raises(CheckpointError, match="asks to run posix.system"):
            load_checkpoint(files[0])
    assert not marker.exists()


@pytest.mark.parametrize("command", ["resume", "predict"])
def test_cli_refuses_code_running_checkpoint(tmp_path: Path, command: str) -> None:
    import tifffile

    marker, (evil, _) = _evil_files(tmp_path)
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.random.default_rng(0).random((3, 32, 32)).astype(np.float32))
    lab = tmp_path / "lab.tif"
    labels = np.zeros((3, 32, 32), np.uint8)
    labels[1, 4:20, 4:20] = 1
    tifffile.imwrite(lab, labels)
    argv = (["train", "--image", img, "--labels", lab, "--resume", evil, "--out", tmp_path / "run"]
            if command == "resume" else ["predict", "--model", evil, "--image", img, "--out", tmp_path / "p.nii.gz"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in argv])
    assert rc == 2 and "refused" in err.getvalue() and "Traceback" not in err.getvalue()
    assert not marker.exists() and not (tmp_path / "run").exists() and not (tmp_path / "p.nii.gz").exists()


def test_session_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    """A session someone sent, whose stored model is malicious (hash updated to match): loading the
    session is fine (it only hashes the file), loading the model from it is refused."""
    marker, (evil, _) = _evil_files(tmp_path)
    save_checkpoint(tmp_path / "good.pt", {"x": torch.zeros(1)})
    folder = tmp_path / "sent.samatch"
    save_session(folder, SessionState(labels=np.zeros((2, 4, 4), np.uint8)), checkpoint=tmp_path / "good.pt")
    doc = json.loads((folder / "session.json").read_text())
    stored = folder / doc["files"]["checkpoint"]["path"]
    stored.write_bytes(evil.read_bytes())
    doc["files"]["checkpoint"]["sha256"] = sha256_file(stored)
    (folder / "session.json").write_text(json.dumps(doc))
    state = load_session(folder)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(state.checkpoint)
    assert not marker.exists()


@pytest.mark.parametrize("key", ["checkpoint", "labels", "prompts"])
@pytest.mark.parametrize("bad", ["../outside.npy", "/etc/hostname", "sub/../../outside.npy", "link.npy"])
def test_session_paths_are_confined_to_the_folder(tmp_path: Path, key: str, bad: str) -> None:
    """Every file a session names goes through ``inside``: nothing outside the folder is read or written."""
    folder = tmp_path / "s"
    save_checkpoint(tmp_path / "c.pt", {"x": torch.zeros(1)})
    save_session(folder, SessionState(labels=np.zeros((2, 4, 4), np.uint8), prompts={"boxes": np.zeros((1, 4))}),
                 checkpoint=tmp_path / "c.pt")
    outside = tmp_path / "outside.npy"
    np.save(outside, np.ones(3))
    if bad == "link.npy":
        (folder / "link.npy").symlink_to(outside)
    doc = json.loads((folder / "session.json").read_text())
    doc["files"][key]["path"] = bad
    doc["files"][key]["sha256"] = sha256_file(outside)  # even with a matching hash
    (folder / "session.json").write_text(json.dumps(doc))
    before = outside.read_bytes()
    with pytest.raises(DataError, match="outside"):
        load_session(folder)
    # a later save of that session must not delete or overwrite the outside file either
    save_session(folder, SessionState(labels=np.ones((2, 4, 4), np.uint8)))
    assert outside.read_bytes() == before
