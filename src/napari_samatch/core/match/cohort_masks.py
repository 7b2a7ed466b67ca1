"""Masks of a whole cohort: one per volume, into a folder, with each source's geometry.

``napari-samatch predict --images DIR --out DIR`` and the napari Cohort dock's "Predict all and export" both
call these. Every target is checked before the first mask is written (an input is never a target; an existing
file is replaced only when the caller says so), so a refused export writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..checkpoint import check_writable_folder, storage_error
from ..data.cohort import Member
from ..data.io import file_kind, read_volume
from ..data.outputs import check_new_files, check_not_an_input
from ..data.writers import write_mask
from ..errors import DataError
from .inference import predict_volume
from .unet import UNet


def mask_targets(members: Sequence[Member], out: str | os.PathLike) -> list[Path]:
    """Each member's mask file in ``out``, named like its volume (so the masks can be given back as labels):
    NIfTI, TIFF for TIFF sources."""
    return [Path(out) / (m.name + (".tif" if file_kind(m.image) == "tiff" else ".nii.gz")) for m in members]


def check_mask_folder(members: Sequence[Member], out: str | os.PathLike, overwrite: bool,
                      inputs: Mapping[str, str | os.PathLike | None] | None = None,
                      fix: str = "choose another --out folder",
                      exists_fix: str = "add --overwrite to replace it, or choose another --out",
                      writable_fix: str = "Choose another folder for --out.") -> list[Path]:
    """The targets, once every check passed: ``out`` is no file and no input, no target is an input, no target
    exists (unless ``overwrite``), the folder is writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"'{out}' is a file; the masks of a cohort go into a folder (one mask per volume).")
    check_not_an_input([out], dict(inputs or {}), fix)
    targets = mask_targets(members, out)
    check_not_an_input(targets, {f"volume {m.name}": m.image for m in members}, fix)
    check_new_files(targets, overwrite, exists_fix)
    check_writable_folder(out, writable_fix)
    return targets


def predict_to_folder(unet: UNet, size: int, members: Sequence[Member], targets: Sequence[Path], overwrite: bool,
                      axis: int = 0, device: str = "cpu", amp=None,
                      on_volume: Callable[[int, Member, Path], None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> list[Path]:
    """Predict each member with ``unet`` and write its mask to its target (checked by ``check_mask_folder``).

    ``on_volume(k, member, target)`` after each write; ``should_stop()`` is asked before each volume.
    Returns the written targets.
    """
    out = Path(targets[0]).parent if targets else None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(out, exc) from exc
    written: list[Path] = []
    for k, (m, target) in enumerate(zip(members, targets)):
        if should_stop is not None and should_stop():
            break
        vol = read_volume(m.image)
        pred = predict_volume(unet, vol.image, size, device=device, axis=axis, amp=amp)
        write_mask(target, pred, like=vol, overwrite=overwrite)
        written.append(Path(target))
        if on_volume is not None:
            on_volume(k, m, Path(target))
    return written
