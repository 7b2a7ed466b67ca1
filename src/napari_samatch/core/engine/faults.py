"""Faults during a run: the device runs out of memory, a checkpoint cannot be written, a device is gone.

Each one ends in a sentence that names the problem and the way on, never a traceback, and never with the
user's last good checkpoint damaged. The engine calls these from its run loop and ``from_checkpoint``.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Callable, Protocol

import torch

from ..checkpoint import disk_full
from ..config import RunConfig
from ..device import select_device
from ..errors import ConfigError, ResourceError, StorageError
from . import distributed
from . import events as ev

log = logging.getLogger(__name__)


class Trainer(Protocol):
    """What these functions use of the engine (the engine imports this module, not the reverse)."""

    config: RunConfig
    device: torch.device
    opt_unet: torch.optim.Optimizer
    opt_sam: torch.optim.Optimizer | None

    def save(self, path: str | Path) -> Path: ...

    def uses_sam(self) -> bool: ...


# What PyTorch's allocators say when they give up: CUDA ("CUDA out of memory", torch.OutOfMemoryError),
# the CPU ("DefaultCPUAllocator: can't allocate memory"), MPS ("MPS backend out of memory").
_OOM_MARKERS = ("out of memory", "can't allocate memory", "defaultcpuallocator")
_OOM_TYPES = tuple(t for t in (MemoryError, getattr(torch, "OutOfMemoryError", None),
                               getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` is an allocator's out-of-memory failure (not any RuntimeError)."""
    if isinstance(exc, _OOM_TYPES):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS)


def free_memory(device: torch.device) -> None:
    """Return what the allocator holds for tensors that are already gone (the failed step's)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def out_of_memory(engine: Trainer, stage: str, ckpt_dir: Path | None) -> tuple[ResourceError, Path | None]:
    """Free what the failed step left, save the state of before it, and say what to change.

    Called after the step's exception is gone (its traceback held the step's tensors). The optimisers
    step only after a complete forward and backward, so an OOM in those (where it nearly always comes)
    leaves the models as they were before the step, and the saved position makes a resume redo it. An
    OOM inside an optimiser's own step (the first AdamW step allocates its state) can leave that one step
    half applied: valid weights all the same. Under torchrun no save is tried: it is a collective, and
    the other ranks wait in the step's all-reduce, not in the save.
    """
    for opt in (engine.opt_unet, engine.opt_sam):
        if opt is not None:
            opt.zero_grad(set_to_none=True)  # gradients of the failed step can be large
    free_memory(engine.device)
    path, unsaved = None, ""
    if ckpt_dir is not None and not distributed.active():
        try:
            path = engine.save(Path(ckpt_dir) / "last.pt")
        except StorageError as exc:
            unsaved = f" (this checkpoint was not saved {_why_and_fix(exc, Path(ckpt_dir) / 'last.pt')[0]})"
    c, dev = engine.config, engine.device.type
    fix = "lower batch_labeled/batch_unlabeled or size"
    if stage in ("sam", "joint") and engine.uses_sam() and c.sam_mode == "full":
        fix += ", use sam_mode decoder"
    fix += ", or use device cpu" if dev != "cpu" else ", or close other programs"
    way_on = (f"the checkpoint {path} resumes the run from there with the new settings" if path else
              "no checkpoint folder was set, so nothing was saved" if ckpt_dir is None else
              "resume from the last checkpoint in the checkpoint folder, if there is one")
    message = (f"Out of memory on {dev} in the {stage} stage (batch_labeled {c.batch_labeled}, "
               f"batch_unlabeled {c.batch_unlabeled}, size {c.size}): {fix}; {way_on}{unsaved}.")
    log.error(message)
    return ResourceError(message), path


def _why_and_fix(exc: StorageError, path: Path) -> tuple[str, str]:
    """('in FOLDER (No space left on device)', the fix) from the writer's error, without its own advice."""
    cause = exc.__cause__
    if not isinstance(cause, OSError) or not cause.strerror:
        return f"({exc})", "choose another checkpoint folder"
    full = disk_full(cause)
    return (f"in {path.parent} ({cause.strerror})",
            "free space or choose another checkpoint folder" if full else "choose a checkpoint folder you can write to")


def periodic_save(engine: Trainer, path: Path, iteration: int, emit: Callable[..., None]) -> None:
    """A checkpoint during the run. A full disk must not end an hour of training, so a failed write is a
    warning (a LOG event with ``level: warning``, printed by the CLI, shown in the Train dock's log):
    the atomic writer kept the previous checkpoint, training goes on, and the next save (at the latest
    the one at the end, which does raise) tries again."""
    try:
        engine.save(path)
    except StorageError as exc:
        message = checkpoint_skipped(exc, path, iteration)
        log.warning(message)
        emit(ev.LOG, message, {"level": "warning", "path": str(path)})
        return
    emit(ev.CHECKPOINT, f"Saved {path}", {"path": str(path)})


def final_save(engine: Trainer, path: Path, stopped: bool) -> Path:
    """The checkpoint at the end of a run or at Stop: nothing comes after it, so a failure is an error."""
    try:
        return engine.save(path)
    except StorageError as exc:
        raise final_save_failed(exc, path, stopped) from exc


def checkpoint_skipped(exc: StorageError, path: Path, iteration: int) -> str:
    """The warning for a periodic checkpoint that could not be written (disk full, quota, read-only)."""
    why, fix = _why_and_fix(exc, path)
    kept = f"the previous checkpoint stays in {path}" if path.is_file() else "no checkpoint is saved yet"
    return (f"Checkpoint of iteration {iteration} not saved {why}. Training goes on, {kept}, and the next "
            f"checkpoint tries again: {fix}.")


def final_save_failed(exc: StorageError, path: Path, stopped: bool) -> StorageError:
    """The error for the checkpoint at the end of a run (or at Stop) that could not be written."""
    why, fix = _why_and_fix(exc, path)
    what = "Stopped" if stopped else "Training finished"
    kept = f"the previous checkpoint stays in {path}" if path.is_file() else "no checkpoint was saved"
    return StorageError(f"{what}, but the checkpoint was not saved {why}: {kept}; {fix}.")


def check_resume_device(config: RunConfig) -> None:
    """A checkpoint that names a device this machine lacks: one sentence on how to resume ('auto' never fails)."""
    try:
        select_device(config.device)
    except ConfigError:
        raise ConfigError(f"This checkpoint was trained on {config.device}, which this machine does not have; "
                          "resume with device cpu (--device cpu, or the Train dock's Device).") from None
