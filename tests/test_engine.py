"""The engine's behaviour: stages and events, pause/resume/stop, checkpoints and resume, previews."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_samatch.core.config import preset
from napari_samatch.core.data.datasets import phantom
from napari_samatch.core.data.slices import resize_labels_back
from napari_samatch.core.engine import events as ev
from napari_samatch.core.engine.engine import Engine
from napari_samatch.core.engine.export import export_model, load_model
from napari_samatch.core.errors import CheckpointError, DataError
from napari_samatch.core.sam.prompts import Prompts


def tiny(data, **kw):
    base = dict(size=64, warmup_iters=3, sam_iters=2, joint_iters=3, batch_labeled=2, batch_unlabeled=2,
                eval_every=0, checkpoint_every=0, device="cpu", threads=2)
    base.update(kw)
    return preset("quick", **base).replace(num_classes=data.num_classes, class_names=list(data.class_names))


@pytest.fixture(scope="module")
def sample():
    data, vol, picked = phantom(shape=(8, 96, 96))
    return data, vol, picked


@pytest.fixture(scope="module")
def sam():
    from napari_samatch.core.sam import load_sam

    return load_sam("litemedsam")


@pytest.fixture(scope="module")
def full_run(sample, sam, tmp_path_factory):
    """One run through all three stages, shared: SAM's encoder (seconds per slice on a CPU) runs once."""
    data, _, _ = sample
    seen: list[ev.Event] = []
    folder = tmp_path_factory.mktemp("run")
    engine = Engine(data, tiny(data, sam_iters=1, joint_iters=2), sam=sam)
    summary = engine.run(seen.append, checkpoint_dir=folder)
    return engine, seen, summary, folder


def test_stages_and_events_in_order(full_run):
    _, seen, summary, folder = full_run
    kinds = [e.kind for e in seen]
    stages = [e.data["stage"] for e in seen if e.kind == ev.STAGE]
    assert stages == ["warmup", "sam", "joint"]
    progress = [e for e in seen if e.kind == ev.PROGRESS]
    assert len(progress) == 6 and progress[-1].global_iteration == 6 == progress[-1].global_total
    assert progress[-1].eta_s is not None and progress[-1].eta_s >= 0
    assert all(np.isfinite(v) for e in progress for v in e.data["losses"].values())
    assert kinds[-1] == ev.DONE and not summary["stopped"]
    assert (folder / "last.pt").is_file() and (folder / "last.pt.sha256").is_file()


def test_stop_writes_checkpoint_and_resume_continues(sample, sam, tmp_path):
    data, _, _ = sample
    config = tiny(data, method="unimatch", sam_iters=0, warmup_iters=4, joint_iters=4)
    engine = Engine(data, config, sam=sam)

    def stop_after_five(e: ev.Event) -> None:
        if e.kind == ev.PROGRESS and e.global_iteration == 5:
            engine.stop()

    seen: list[ev.Event] = []
    summary = engine.run(lambda e: (seen.append(e), stop_after_five(e)), checkpoint_dir=tmp_path)
    assert summary["stopped"] and seen[-1].kind == ev.STOPPED
    assert (tmp_path / "last.pt").is_file()

    resumed = Engine.from_checkpoint(tmp_path / "last.pt", data)
    assert (resumed.stage_index, resumed.stage_iter) == (2, 1)  # joint stage, one step done
    rest: list[ev.Event] = []
    resumed.run(rest.append)
    steps = [e.global_iteration for e in rest if e.kind == ev.PROGRESS]
    assert steps == [6, 7, 8]
    for a, b in zip(engine.unet.state_dict().values(), Engine.from_checkpoint(tmp_path / "last.pt", data).unet.state_dict().values()):
        assert torch.equal(a, b)


def test_pause_blocks_until_resume(sample, sam):
    data, _, _ = sample
    engine = Engine(data, tiny(data, method="supervised", sam_iters=0, warmup_iters=2, joint_iters=2), sam=sam)
    seen: list[str] = []

    def on_event(e: ev.Event) -> None:
        seen.append(e.kind)
        if e.kind == ev.PROGRESS and e.global_iteration == 1:
            engine.pause()
            threading.Timer(0.3, engine.resume).start()

    engine.run(on_event)
    assert ev.PAUSED in seen and ev.RESUMED in seen and seen[-1] == ev.DONE
    assert seen.index(ev.PAUSED) < seen.index(ev.RESUMED)


def test_stop_while_paused(sample, sam):
    data, _, _ = sample
    engine = Engine(data, tiny(data, method="supervised", sam_iters=0), sam=sam)

    def on_event(e: ev.Event) -> None:
        if e.kind == ev.PROGRESS and e.global_iteration == 1:
            engine.pause()
            threading.Timer(0.2, engine.stop).start()

    summary = engine.run(on_event)
    assert summary["stopped"]


def test_preview_and_refine_with_edited_prompts(sample, full_run):
    data, _, _ = sample
    engine = full_run[0]
    idx = data.unlabeled_indices()[:2]
    p = engine.preview(idx)
    assert p["raw"].shape == (2, 64, 64) and p["refined"].shape == (2, 64, 64)
    assert p["confidence"].min() >= 0 and p["confidence"].max() <= 1
    # a user-drawn box for class 3 on the first slice
    box = Prompts(image_index=torch.tensor([0]), class_index=torch.tensor([3]),
                  boxes=torch.tensor([[16.0, 16.0, 40.0, 40.0]]), points=None, point_labels=None,
                  scores=torch.ones(1), num_images=1, frame_size=(64, 64))
    out = engine.refine_with_prompts(idx[0], box)
    assert out["refined"].shape == (64, 64)
    inside = out["refined"][16:41, 16:41]
    assert (out["refined"] == 3).sum() == (inside == 3).sum()  # class 3 only where its box is


def test_the_answer_at_the_slices_own_size(sample, full_run):
    data, vol, picked = sample
    engine = full_run[0]
    every = list(range(len(data)))
    frame, native = engine.preview(every), engine.preview(every, native=True)
    assert native["raw"].shape == native["refined"].shape == native["confidence"].shape == (8, 96, 96)
    assert frame["refined"].shape == (8, 64, 64)
    for key in ("boxes", "class_index", "image_index"):  # the same prompts, in the training frame
        assert np.array_equal(native["prompts"][key], frame["prompts"][key])
    assert len(native["slice_confidence"]) == 8
    # the same answer, not a training-frame label map blown up: mostly equal to the frame's, resized
    back = resize_labels_back(frame["refined"], (96, 96))
    assert (native["refined"] == back).mean() > 0.97
    # the first result, the painted slices' interpolation, holds the painted slices exactly as painted
    first = engine.prior_preview(every, native=True)
    assert first["raw"].shape == (8, 96, 96)
    assert all(np.array_equal(first["raw"][z], vol.labels[z]) for z in picked)
    box = Prompts(image_index=torch.tensor([0]), class_index=torch.tensor([3]),
                  boxes=torch.tensor([[16.0, 16.0, 40.0, 40.0]]), points=None, point_labels=None,
                  scores=torch.ones(1), num_images=1, frame_size=(64, 64))
    out = engine.refine_with_prompts(data.unlabeled_indices()[0], box, native=True)
    assert out["refined"].shape == out["confidence"].shape == (96, 96)
    assert (out["refined"][:22, :] == 3).sum() == 0  # class 3 inside its box (rows 24-60 at 96 px), not above


def test_an_answer_at_the_slices_own_size_needs_one_size():
    from napari_samatch.core.engine.review import native_shape

    class Data:
        def image_shape(self, i):
            return (96, 96) if i < 2 else (80, 96)

    engine = type("E", (), {"data": Data()})()
    assert native_shape(engine, [0, 1]) == (96, 96)
    with pytest.raises(ValueError, match="one size"):
        native_shape(engine, [1, 2])


def test_export_and_load_model(sample, sam, tmp_path):
    data, _, _ = sample
    engine = Engine(data, tiny(data, method="supervised", sam_iters=0, joint_iters=0), sam=sam)
    engine.run()
    export_model(engine, tmp_path / "model.pt")
    unet, config = load_model(tmp_path / "model.pt")
    assert config.num_classes == data.num_classes and config.size == 64
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        engine.unet.eval()
        assert torch.allclose(unet(x), engine.unet(x), atol=1e-5)


def test_no_labeled_slice_is_a_clear_error(sample):
    data, _, _ = sample
    empty = data.subset(data.unlabeled_indices())
    with pytest.raises(DataError, match="Paint at least one slice"):
        Engine(empty, tiny(data))


def test_checkpoint_of_other_classes_is_refused(sample, sam, tmp_path):
    data, _, _ = sample
    engine = Engine(data, tiny(data, method="supervised", sam_iters=0, joint_iters=0), sam=sam)
    engine.save(tmp_path / "c.pt")
    two = data.subset(range(len(data)))
    two.num_classes, two.class_names = 2, ["background", "heart"]
    two.labels = [None if lab is None else (lab > 0).astype(np.uint8) for lab in two.labels]
    two.hidden = [None if lab is None else (lab > 0).astype(np.uint8) for lab in two.hidden]
    with pytest.raises(CheckpointError):
        Engine.from_checkpoint(tmp_path / "c.pt", two, num_classes=2, class_names=["background", "heart"])


def test_warmup_is_refitted_while_a_painted_class_is_missed(sample):
    """A class still missed on the painted slices after the warm-up gets half the warm-up again, at most
    twice, with the progress total and a line for the user saying why; a fitted model gets none."""
    data, _, _ = sample

    def run(fit_dice):
        seen: list[ev.Event] = []
        config = tiny(data, method="supervised", warmup_method="supervised", warmup_iters=50, sam_iters=0,
                      joint_iters=0, warmup_fit_dice=fit_dice)
        Engine(data, config).run(seen.append)
        return seen

    seen = run(0.99)  # unreachable in 50 steps at 64 px: both refits run
    progress = [e for e in seen if e.kind == ev.PROGRESS]
    assert len(progress) == 50 + 25 + 25 and progress[-1].global_iteration == progress[-1].global_total == 100
    notes = [e.message for e in seen if e.kind == ev.LOG and "still misses" in e.message]
    assert len(notes) == 2 and "warming up 25 more steps" in notes[0]
    assert len([e for e in run(0.0) if e.kind == ev.PROGRESS]) == 50
