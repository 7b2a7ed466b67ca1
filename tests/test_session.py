"""Sessions (headless): round trip, atomic generations, hashes, and paths confined to the folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_samatch.core.data.session import (
    SessionState,
    default_session_dir,
    has_session,
    inside,
    load_session,
    save_session,
)
from napari_samatch.core.errors import CheckpointError, DataError


def _state(rng: np.random.Generator) -> SessionState:
    labels = np.zeros((4, 16, 20), np.uint8)
    labels[1, 3:9, 4:12] = 2
    return SessionState(
        name="heart", settings={"axis": 0, "class_names": ["background", "a", "b"], "train": {"size": 64}},
        labels=labels, labeled_slices=[1], accepted_slices=[2], corrected_slices=[3],
        pseudo_labels=rng.integers(0, 3, (4, 16, 20)).astype(np.uint8),
        confidence=rng.random((4, 16, 20)).astype(np.float32),
        prompts={"box": rng.random((2, 4)), "box_slice": np.array([0, 3]), "box_class": np.array([1, 2])},
        image=rng.random((4, 16, 20)).astype(np.float32), source=None, spacing=(2.0, 1.0, 1.0),
        affine=np.diag([2.0, 1.0, 1.0, 1.0]))


def test_round_trip_keeps_every_array_and_list(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    st = _state(rng)
    ckpt = tmp_path / "elsewhere" / "last.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights" * 100)
    save_session(tmp_path / "s", st, checkpoint=ckpt)
    back = load_session(tmp_path / "s")
    for key in ("labels", "pseudo_labels", "confidence", "image"):
        np.testing.assert_array_equal(getattr(back, key), getattr(st, key))
    assert back.labeled_slices == [1] and back.accepted_slices == [2] and back.corrected_slices == [3]
    assert back.settings == st.settings and back.name == "heart" and back.spacing == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(back.affine, st.affine)
    assert set(back.prompts) == set(st.prompts)
    np.testing.assert_allclose(back.prompts["box"], st.prompts["box"])
    # the checkpoint was copied inside the folder, with its hash
    assert back.checkpoint.is_relative_to((tmp_path / "s").resolve())
    assert back.checkpoint.read_bytes() == ckpt.read_bytes() and len(back.checkpoint_sha256) == 64
    doc = json.loads((tmp_path / "s" / "session.json").read_text())
    assert all(not Path(f["path"]).is_absolute() for f in doc["files"].values())


def test_second_save_replaces_generation_and_reuses_same_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    st = _state(rng)
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x" * 1000)
    folder = tmp_path / "s"
    save_session(folder, st, checkpoint=ckpt)
    first = json.loads((folder / "session.json").read_text())
    st.labels[2, 0, 0] = 1
    save_session(folder, st, checkpoint=ckpt)
    second = json.loads((folder / "session.json").read_text())
    assert second["generation"] == first["generation"] + 1
    assert second["files"]["checkpoint"] == first["files"]["checkpoint"]  # same bytes: not copied again
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert not any(n.startswith("labels.1.") for n in names)  # old generation removed
    assert load_session(folder).labels[2, 0, 0] == 1
    assert has_session(folder) and not has_session(tmp_path)


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    st = _state(np.random.default_rng(2))
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"y" * 100)
    folder = tmp_path / "s"
    save_session(folder, st, checkpoint=ckpt)
    doc = json.loads((folder / "session.json").read_text())
    (folder / doc["files"]["checkpoint"]["path"]).write_bytes(b"z" * 100)
    with pytest.raises(CheckpointError, match="hash"):
        load_session(folder)
    assert load_session(folder, verify=False).checkpoint is not None


@pytest.mark.parametrize("bad", ["../outside.npy", "/etc/passwd", "a/../../b.npy", "C:/x.npy", ""])
def test_paths_outside_the_folder_are_refused(tmp_path: Path, bad: str) -> None:
    st = _state(np.random.default_rng(3))
    folder = tmp_path / "s"
    save_session(folder, st)
    doc = json.loads((folder / "session.json").read_text())
    doc["files"]["labels"]["path"] = bad
    (folder / "session.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="outside"):
        load_session(folder)


def test_symlink_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "secret.npy").write_bytes(b"")
    (tmp_path / "s" / "link.npy").symlink_to(tmp_path / "secret.npy")
    with pytest.raises(DataError, match="outside"):
        inside(tmp_path / "s", "link.npy")
    assert inside(tmp_path / "s", "sub/x.npy") == (tmp_path / "s" / "sub" / "x.npy").resolve()


def test_not_a_session(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="session.json"):
        load_session(tmp_path)
    (tmp_path / "session.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="not a napari-samatch session"):
        load_session(tmp_path)


def test_default_folder_beside_source_or_in_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAPARI_SAMATCH_HOME", str(tmp_path / "home"))
    src = tmp_path / "data" / "patient001.nii.gz"
    src.parent.mkdir()
    src.write_bytes(b"")
    assert default_session_dir("patient001", src) == tmp_path / "data" / "patient001.samatch"
    assert default_session_dir("cardiac phantom") == tmp_path / "home" / "autosave" / "cardiac_phantom"
    # an unwritable source folder (simulated: tests may run as root) falls back to the home folder
    monkeypatch.setattr("napari_samatch.core.data.session.os.access", lambda *a, **k: False)
    assert default_session_dir("p", src) == tmp_path / "home" / "autosave" / "p"


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    import os

    from napari_samatch.core.checkpoint import atomic_write_bytes

    dead = tmp_path / ".last.pt.999999999.k2j4.tmp"  # beyond any PID: its writer is gone
    mine = tmp_path / f".last.pt.{os.getpid()}.q7x1.tmp"  # this process: may be a write in flight
    other = tmp_path / ".other.pt.999999999.a1.tmp"  # another file's temp: not ours to judge
    for p in (dead, mine, other):
        p.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / "last.pt", b"whole")
    assert (tmp_path / "last.pt").read_bytes() == b"whole"
    assert not dead.exists() and mine.exists() and other.exists()


def test_unchanged_arrays_are_not_written_again(tmp_path: Path) -> None:
    """An autosave every 30 s must not rewrite a CT volume's image (and unchanged labels) each time: the new
    generation names the old file, whose bytes and hash are the same; a changed or damaged file is rewritten."""
    st = _state(np.random.default_rng(2))
    folder = tmp_path / "s"
    save_session(folder, st)
    first = json.loads((folder / "session.json").read_text())["files"]
    image = folder / first["image"]["path"]
    written = image.stat().st_mtime_ns
    st.labels[0, 0, 0] = 1  # only the labels change
    save_session(folder, st)
    second = json.loads((folder / "session.json").read_text())["files"]
    assert second["labels"] != first["labels"] and not (folder / first["labels"]["path"]).exists()
    for key in ("image", "confidence", "pseudo_labels"):
        assert second[key] == first[key]  # the generation-1 file, kept
    assert image.stat().st_mtime_ns == written
    back = load_session(folder)  # every hash checked
    np.testing.assert_array_equal(back.image, st.image)
    np.testing.assert_array_equal(back.labels, st.labels)

    image.write_bytes(image.read_bytes()[:-4])  # damaged since: the next save writes it afresh
    save_session(folder, st)
    third = json.loads((folder / "session.json").read_text())["files"]
    assert third["image"]["path"] != first["image"]["path"] and third["image"]["sha256"] == first["image"]["sha256"]
    np.testing.assert_array_equal(load_session(folder).image, st.image)
