"""Files a user may not read (issue 16): the command line names the file and says it cannot be read, exits 2,
and writes nothing. Tests run as root, where file modes stop nothing, so reading is refused by patching
``open``. Sibling of ``test_bad_input_files.py`` (the table of refusals)."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import pytest

from bad_input_helpers import TINY, cli, h5, img, labels, listing, model_file, ssl4mis_root, volume_files


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
