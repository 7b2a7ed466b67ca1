"""Faults during a run: out of memory, a full disk, a missing GPU at resume, a bad ``--out``, Stop in each stage.

All headless and on the CPU with tiny settings (32 px, a few iterations). Out of memory and a full disk are
simulated with monkeypatch: ``Engine.step`` raises what PyTorch's allocators raise, ``os.fsync`` raises
``ENOSPC`` (or another errno) for checkpoint-sized files only, so the real atomic writer runs around it.
Every test checks that the message says what to do, that the last good checkpoint still loads, that no
temp file is left, and that the user's slices are unchanged.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch

from napari_samatch import cli, console
from napari_samatch.core import checkpoint as checkpoint_mod
from napari_samatch.core.checkpoint import load_checkpoint, save_checkpoint
from napari_samatch.core.config import RunConfig
from napari_samatch.core.data.datasets import phantom
from napari_samatch.core.engine import events as ev
from napari_samatch.core.engine import faults
from napari_samatch.core.engine.engine import STAGES, Engine
from napari_samatch.core.errors import ConfigError, ResourceError, StorageError


def config(data, **kw) -> RunConfig:
    base = dict(method="unimatch", warmup_method="unimatch", warmup_iters=0, sam_iters=0, joint_iters=6, size=32,
                batch_labeled=2, batch_unlabeled=2, eval_every=0, checkpoint_every=2, device="cpu", threads=1,
                amp=False, num_classes=data.num_classes, class_names=list(data.class_names))
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def data():
    sliceset, _, _ = phantom(shape=(6, 48, 48))
    return sliceset


def snapshot(data) -> list[np.ndarray | None]:
    return [None if a is None else np.array(a, copy=True) for a in [*data.images, *data.labels]]


def assert_unchanged(data, before: list) -> None:
    after = snapshot(data)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert (a is None and b is None) or np.array_equal(a, b)


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def write_volume(folder: Path, data) -> tuple[Path, Path]:
    """The phantom's labeled slices as the image and labels files of ``train --image --labels``."""
    image = np.stack([np.asarray(a, np.float32) for a in data.images])
    labels = np.stack([np.zeros(image.shape[1:], np.uint8) if lab is None else lab for lab in data.labels])
    tifffile.imwrite(folder / "image.tif", image)
    tifffile.imwrite(folder / "labels.tif", labels)
    return folder / "image.tif", folder / "labels.tif"


def cli_args(img: Path, lab: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--image", str(img), "--labels", str(lab), "--out", str(out), "--method", "unimatch",
            "--warmup-iters", "0", "--sam-iters", "0", "--joint-iters", "3", "--size", "32", "--device", "cpu",
            "--batch-labeled", "2", "--batch-unlabeled", "2", "--threads", "1", "--eval-every", "0",
            "--set", "checkpoint_every=0", "--quiet", *extra]


# ------------------------------------------------------------------------------------------ out of memory
OOM = {
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB."),
    "cpu": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: not enough "
                                "memory: you tried to allocate 1073741824 bytes."),
    "cpu-linux": lambda: RuntimeError("[enforce fail at CPUAllocator.cpp:68] . DefaultCPUAllocator: can't "
                                      "allocate memory: you tried to allocate 1073741824 bytes. Error code 12"),
    "mps": lambda: RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)."),
}


def failing_step(monkeypatch, at: int, make_error) -> list:
    """``Engine.step`` raises ``make_error()`` on its ``at``-th call (1-based), holding an activation-like
    tensor in its frame; returns a weak reference to it (in a list) to check that it is freed."""
    real, calls, held = Engine.step, [], []

    def step(self, stage):
        calls.append(stage)
        if len(calls) == at:
            activation = torch.ones(256, 256)
            held.append(weakref.ref(activation))
            raise make_error()
        return real(self, stage)

    monkeypatch.setattr(Engine, "step", step)
    return held


@pytest.mark.parametrize("kind", list(OOM))
def test_out_of_memory_saves_the_state_before_the_step_and_says_what_to_do(data, tmp_path, monkeypatch, kind):
    assert faults.is_out_of_memory(OOM[kind]())
    before = snapshot(data)
    engine = Engine(data, config(data, checkpoint_every=0))
    held = failing_step(monkeypatch, 4, OOM[kind])
    seen: list[ev.Event] = []
    with pytest.raises(ResourceError) as info:
        engine.run(seen.append, checkpoint_dir=tmp_path)
    message = str(info.value)
    assert message == (f"Out of memory on cpu in the joint stage (batch_labeled 2, batch_unlabeled 2, size 32): "
                       f"lower batch_labeled/batch_unlabeled or size, or close other programs; the checkpoint "
                       f"{tmp_path / 'last.pt'} resumes the run from there with the new settings.")
    assert [e.kind for e in seen[-2:]] == [ev.CHECKPOINT, ev.ERROR] and seen[-1].message == message
    assert held[0]() is None and info.value.__context__ is None  # the failed step's tensors are gone
    assert all(p.grad is None for p in engine.unet.parameters())  # and so are its gradients
    assert load_checkpoint(tmp_path / "last.pt")["stage_iter"] == 3  # the 3 finished steps; the 4th is redone
    assert temp_files(tmp_path) == []

    monkeypatch.undo()
    resumed = Engine.from_checkpoint(tmp_path / "last.pt", data, batch_labeled=1)  # the advice: a smaller batch
    steps = []
    summary = resumed.run(lambda e: steps.append(e.iteration) if e.kind == ev.PROGRESS else None)
    assert not summary["stopped"] and steps == [4, 5, 6]
    assert_unchanged(data, before)


def test_out_of_memory_on_a_gpu_advises_the_cpu_and_without_a_folder_says_nothing_was_saved():
    stub = SimpleNamespace(opt_unet=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), opt_sam=None,
                           device=torch.device("cuda"), config=RunConfig(size=256, sam_mode="full"),
                           uses_sam=lambda: True)
    error, path = faults.out_of_memory(stub, "joint", None)
    assert path is None and str(error) == (
        "Out of memory on cuda in the joint stage (batch_labeled 4, batch_unlabeled 4, size 256): lower "
        "batch_labeled/batch_unlabeled or size, use sam_mode decoder, or use device cpu; no checkpoint folder was "
        "set, so nothing was saved.")


def test_other_errors_are_not_taken_for_out_of_memory(data, tmp_path, monkeypatch):
    assert not faults.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    engine = Engine(data, config(data, checkpoint_every=0))
    failing_step(monkeypatch, 2, lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="mat1 and mat2") as info:
        engine.run(checkpoint_dir=tmp_path)
    assert not isinstance(info.value, ResourceError)  # a bug keeps its traceback


def test_cli_prints_the_out_of_memory_sentence_without_a_traceback(data, tmp_path, monkeypatch, capsys):
    img, lab = write_volume(tmp_path, data)
    failing_step(monkeypatch, 2, OOM["cuda"])
    assert cli.main(cli_args(img, lab, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "napari-samatch: Out of memory on cpu in the joint stage" in err and "Traceback" not in err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["stage_iter"] == 1


# ------------------------------------------------------------------------------------------ a full disk
def disk_full(monkeypatch, code: int = errno.ENOSPC) -> dict:
    """``os.fsync`` of a checkpoint-sized regular file fails with ``code`` while ``state['full']``."""
    state, real = {"full": False}, os.fsync

    def fsync(fd):
        info = os.fstat(fd)
        if state["full"] and stat.S_ISREG(info.st_mode) and info.st_size > 4096:
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return state


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "free space or choose another checkpoint folder"),
                                       (errno.EDQUOT, "free space or choose another checkpoint folder"),
                                       (errno.EROFS, "choose a checkpoint folder you can write to")],
                         ids=["ENOSPC", "EDQUOT", "EROFS"])
def test_a_full_disk_mid_run_warns_keeps_the_previous_checkpoint_and_training_goes_on(data, tmp_path, monkeypatch,
                                                                                     code, fix):
    before = snapshot(data)
    disk = disk_full(monkeypatch, code)
    engine = Engine(data, config(data))  # checkpoints at iterations 2 and 4 (refused), the final one at 6
    warnings, checked = [], []

    def on_event(e: ev.Event) -> None:
        if e.kind == ev.PROGRESS and e.iteration == 3:
            disk["full"] = True
        if e.kind == ev.LOG and e.data.get("level") == "warning":
            warnings.append(e.message)
            checked.append(load_checkpoint(tmp_path / "last.pt")["stage_iter"])  # hash verified, still iteration 2
            assert temp_files(tmp_path) == []
            disk["full"] = False  # space freed: the final checkpoint is written

    summary = engine.run(on_event, checkpoint_dir=tmp_path)
    assert not summary["stopped"] and checked == [2]
    assert warnings == [f"Checkpoint of iteration 4 not saved in {tmp_path} ({os.strerror(code)}). Training goes "
                        f"on, the previous checkpoint stays in {tmp_path / 'last.pt'}, and the next checkpoint "
                        f"tries again: {fix}."]
    assert load_checkpoint(tmp_path / "last.pt")["stage_index"] == len(STAGES)  # the final save got through
    assert temp_files(tmp_path) == []
    assert_unchanged(data, before)


def test_a_disk_still_full_at_the_end_is_an_error_and_the_previous_checkpoint_stays(data, tmp_path, monkeypatch):
    disk = disk_full(monkeypatch)
    engine = Engine(data, config(data))

    def on_event(e: ev.Event) -> None:
        if e.kind == ev.PROGRESS and e.iteration == 3:
            disk["full"] = True

    with pytest.raises(StorageError) as info:
        engine.run(on_event, checkpoint_dir=tmp_path)
    assert str(info.value) == (f"Training finished, but the checkpoint was not saved in {tmp_path} (No space left "
                               f"on device): the previous checkpoint stays in {tmp_path / 'last.pt'}; free space or "
                               "choose another checkpoint folder.")
    assert load_checkpoint(tmp_path / "last.pt")["stage_iter"] == 2
    assert temp_files(tmp_path) == []


def test_cli_prints_the_disk_warning(capsys):
    printer = console.progress_printer()
    printer(ev.Event(ev.LOG, message="Checkpoint of iteration 4 not saved ...", data={"level": "warning"}))
    assert "warning: Checkpoint of iteration 4 not saved ..." in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ a missing GPU at resume
@pytest.fixture
def gpu_checkpoint(data, tmp_path, monkeypatch):
    """A real checkpoint after 1 of 2 steps, its config edited to say ``cuda`` (hash rewritten), on a machine
    that reports neither CUDA nor MPS (also when the test runs on one)."""
    engine = Engine(data, config(data, joint_iters=2, checkpoint_every=0))
    engine.run(lambda e: engine.stop() if e.kind == ev.PROGRESS else None, checkpoint_dir=tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    def with_device(device: str) -> Path:
        payload = load_checkpoint(tmp_path / "last.pt")
        payload.pop("format")
        payload["config"]["device"] = device
        save_checkpoint(tmp_path / "last.pt", payload)
        return tmp_path / "last.pt"

    return with_device


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_resume_on_a_machine_without_the_gpu_says_how(data, gpu_checkpoint, device):
    path = gpu_checkpoint(device)
    with pytest.raises(ConfigError) as info:
        Engine.from_checkpoint(path, data)
    assert str(info.value) == (f"This checkpoint was trained on {device}, which this machine does not have; resume "
                               "with device cpu (--device cpu, or the Train dock's Device).")


@pytest.mark.parametrize("override", [{"device": "cpu"}, {"device": "auto"}])
def test_resume_with_an_explicit_device_continues_on_the_cpu(data, gpu_checkpoint, override):
    engine = Engine.from_checkpoint(gpu_checkpoint("cuda"), data, **override)
    assert engine.device.type == "cpu" and engine.stage_iter == 1
    assert not engine.run()["stopped"] and engine.stage_index == len(STAGES)


def test_a_checkpoint_saying_auto_resumes_on_the_cpu_silently(data, gpu_checkpoint):
    assert Engine.from_checkpoint(gpu_checkpoint("auto"), data).device.type == "cpu"


def test_cli_resume_without_the_gpu(data, tmp_path, gpu_checkpoint, capsys):
    path = gpu_checkpoint("cuda")
    img, lab = write_volume(tmp_path, data)
    args = ["train", "--image", str(img), "--labels", str(lab), "--resume", str(path), "--out", str(tmp_path / "run"),
            "--quiet"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "napari-samatch: This checkpoint was trained on cuda" in err and "Traceback" not in err
    assert cli.main([*args, "--device", "cpu"]) == 0
    assert (tmp_path / "run" / "model.pt").is_file()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["device"] == "cpu"


# ------------------------------------------------------------------------------------------ train --out
@pytest.mark.parametrize("case", ["out-is-a-file", "parent-is-a-file", "not-writable"])
def test_cli_checks_out_before_training(data, tmp_path, monkeypatch, capsys, case):
    img, lab = write_volume(tmp_path, data)
    (tmp_path / "afile").write_text("x")
    out = {"out-is-a-file": tmp_path / "afile", "parent-is-a-file": tmp_path / "afile" / "run",
           "not-writable": tmp_path / "ro" / "run"}[case]
    if case == "not-writable":  # as root, chmod does not stop a write: simulate the refusal
        (tmp_path / "ro").mkdir()

        def refuse(*a, **kw):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(checkpoint_mod.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(Engine, "__init__", lambda *a, **kw: pytest.fail("trained before checking --out"))
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(cli_args(img, lab, out)) == 2
    err = capsys.readouterr().err.strip()
    expected = {"out-is-a-file": f"{tmp_path / 'afile'} is a file, not a folder",
                "parent-is-a-file": f"{tmp_path / 'afile'} is a file, not a folder",
                "not-writable": f"{tmp_path / 'ro'} is not writable (Permission denied)"}[case]
    assert err == f"napari-samatch: Cannot write to {out}: {expected}. Choose another folder for --out."
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # nothing created, no probe left


# ------------------------------------------------------------------------------------------ Stop in each stage
# (tiny_sam: a 64-px segment-anything ViT, as the GUI tests use; tests/conftest.py)


@pytest.mark.parametrize("stage", STAGES)
def test_stop_in_each_stage_saves_the_position_and_resumes_to_the_end(data, tiny_sam, tmp_path, stage):
    """SAM-Match with 2 + 2 + 2 iterations; Stop after the first iteration of ``stage``."""
    before = snapshot(data)
    cfg = config(data, method="samatch", warmup_iters=2, sam_iters=2, joint_iters=2, size=64, checkpoint_every=0,
                 sam_backend="sam", sam_checkpoint=str(tiny_sam), prompt_thresh=0.3)
    engine = Engine(data, cfg)
    seen: list[ev.Event] = []

    def on_event(e: ev.Event) -> None:
        seen.append(e)
        if e.kind == ev.PROGRESS and e.stage == stage and e.iteration == 1:
            engine.stop()

    summary = engine.run(on_event, checkpoint_dir=tmp_path)
    done = 2 * STAGES.index(stage) + 1
    assert summary["stopped"] and seen[-1].kind == ev.STOPPED and seen[-1].data["path"] == str(tmp_path / "last.pt")
    assert [e.global_iteration for e in seen if e.kind == ev.PROGRESS][-1] == done
    payload = load_checkpoint(tmp_path / "last.pt")
    assert (payload["stage_index"], payload["stage_iter"]) == (STAGES.index(stage), 1)
    assert ("sam" in payload) == (stage != "warmup")  # SAM is saved once it has been built

    resumed = Engine.from_checkpoint(tmp_path / "last.pt", data)
    if stage != "warmup":  # SAM's fine-tuned weights came back, not the tiny checkpoint's
        for a, b in zip(engine.sam.state_dict().values(), resumed.sam.state_dict().values()):
            assert torch.equal(a, b)
    progress: list[ev.Event] = []
    summary = resumed.run(lambda e: progress.append(e) if e.kind == ev.PROGRESS else None, checkpoint_dir=tmp_path)
    assert not summary["stopped"]
    assert [e.global_iteration for e in progress] == list(range(done + 1, 7))
    assert [(e.stage, e.iteration) for e in progress][0] == (stage, 2)
    final = load_checkpoint(tmp_path / "last.pt")
    assert (final["stage_index"], final["stage_iter"]) == (len(STAGES), 0)
    assert_unchanged(data, before)
