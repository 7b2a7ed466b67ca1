"""Where results go: never onto an input, never over an earlier result unless the user asked.

Every writer of the CLI and the plugin checks its targets here before it writes. An output that is an
input (the same path, a link to it, a hard link) is always refused: no flag makes that safe. An output
that already exists is replaced only when the caller says so (``napari-samatch ... --overwrite``; in
napari, the save dialog has already asked).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import DataError, StorageError

# What a training run writes into its folder (``train --out``), besides the sidecars of the .pt files.
RUN_FILES = ("model.pt", "last.pt", "metrics.json")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file or folder: equal paths, a symbolic link to it, or a hard link."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_not_an_input(targets: Iterable[str | os.PathLike], inputs: Mapping[str, str | os.PathLike | None],
                       fix: str = "choose another output path") -> None:
    """Refuse to write any of ``targets`` when it is one of ``inputs`` (``{description: path}``)."""
    for target in targets:
        for what, source in inputs.items():
            if source is not None and str(source) != "" and same_file(target, source):
                link = "" if os.path.realpath(target) == os.path.realpath(source) and \
                    os.path.abspath(target) == os.path.abspath(source) else " (through a link)"
                raise DataError(f"The output '{target}' is the input {what} '{source}'{link}: writing there would "
                                f"destroy or mix with the input, so nothing was written; {fix}.")


def check_new_files(targets: Iterable[str | os.PathLike], overwrite: bool,
                    fix: str = "add --overwrite to replace it, or choose another --out") -> None:
    """Refuse to replace an existing file unless ``overwrite``."""
    if overwrite:
        return
    for target in targets:
        if Path(target).is_file():
            raise StorageError(f"'{target}' already exists; {fix}.")


def check_run_folder(folder: str | os.PathLike, overwrite: bool, resume: str | os.PathLike | None = None,
                     files: Iterable[str] = RUN_FILES,
                     fix: str = "add --overwrite to replace it, or choose another --out") -> None:
    """Refuse a folder holding an earlier run's results, unless ``overwrite`` or the run is resumed from it.

    Resuming from ``folder/last.pt`` continues that run in its own folder, which is what the checkpoint is
    for; any other earlier run there is replaced only when asked.
    """
    folder = Path(folder)
    if overwrite or not folder.is_dir():
        return
    if resume is not None and Path(resume).parent.exists() and same_file(Path(resume).parent, folder):
        return
    found = [name for name in files if (folder / name).exists()]
    if found:
        raise StorageError(f"'{folder}' holds an earlier run ({', '.join(found)}); {fix}.")
