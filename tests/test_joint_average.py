"""The joint stage's weight average (``joint_average``, core/match/averaging.py): the Match model ends as the
mean of its weights after each joint step, a Stop keeps the mean so far, and a resume goes on with it."""

from __future__ import annotations

import pytest
import torch

from napari_samatch.core.checkpoint import load_checkpoint
from napari_samatch.core.config import RunConfig, preset
from napari_samatch.core.data.datasets import phantom
from napari_samatch.core.data.holdout import split_validation
from napari_samatch.core.data.slices import SliceSet
from napari_samatch.core.engine import events as ev
from napari_samatch.core.engine.engine import Engine
from napari_samatch.core.match.averaging import WeightAverage


def config(data, **kw) -> RunConfig:
    base = dict(method="unimatch", warmup_method="supervised", warmup_iters=2, sam_iters=0, joint_iters=4, size=32,
                batch_labeled=2, batch_unlabeled=2, eval_every=0, checkpoint_every=0, device="cpu", threads=1,
                amp=False, joint_average=True, num_classes=data.num_classes, class_names=list(data.class_names))
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def data():
    sliceset, _, _ = phantom(shape=(6, 48, 48))
    return sliceset


def recording(engine: Engine) -> list[dict[str, torch.Tensor]]:
    """The Match model's state after each joint step of ``engine``."""
    states, step = [], engine.step

    def recorded(stage: str) -> dict:
        logs = step(stage)
        if stage == "joint":
            states.append({k: v.detach().clone() for k, v in engine.unet.state_dict().items()})
        return logs
    engine.step = recorded
    return states


def test_the_mean_of_the_states_it_was_given():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average, states = WeightAverage(), []
    for _ in range(3):
        model.train()(torch.randn(4, 3))  # moves BatchNorm's statistics and counter
        with torch.no_grad():
            model[0].weight.add_(torch.randn(2, 3))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        average.add(model)
    average.apply(model)
    got = model.state_dict()
    for key, value in got.items():
        want = states[-1][key] if not value.is_floating_point() else torch.stack([s[key] for s in states]).mean(0)
        assert torch.allclose(value, want, atol=1e-6), key
    assert int(got["1.num_batches_tracked"]) == 3 and average.count == 3


def test_the_run_ends_with_the_joint_stages_mean_and_says_so(data):
    engine = Engine(data, config(data))
    states = recording(engine)
    logs: list[str] = []
    engine.run(lambda e: logs.append(e.message) if e.kind == ev.LOG else None)
    assert len(states) == 4
    for key, value in engine.unet.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, torch.stack([s[key] for s in states]).mean(0), atol=1e-6), key
    assert "The Match model is the mean of its weights over the 4 joint steps" in logs
    assert engine.average is None


def test_without_it_the_run_ends_with_the_last_weights(data):
    engine = Engine(data, config(data, joint_average=False))
    states = recording(engine)
    engine.run()
    for key, value in engine.unet.state_dict().items():
        assert torch.equal(value, states[-1][key]), key


def test_one_painted_slice_keeps_the_last_weights():
    _, vol, _ = phantom(shape=(6, 48, 48))
    sliceset = SliceSet.from_volume(vol, labeled=[2], num_classes=4, class_names=["background", "RV", "Myo", "LV"])
    engine = Engine(sliceset, config(sliceset))
    states = recording(engine)
    engine.run()
    assert len(engine.labeled_idx) == 1
    for key, value in engine.unet.state_dict().items():
        assert torch.equal(value, states[-1][key]), key


def test_every_preset_keeps_the_last_weights_unless_asked():
    assert not any(preset(name).joint_average for name in ("quick", "standard", "paper"))
    assert preset("quick", joint_average=True).joint_average


def test_a_stop_keeps_the_mean_so_far_and_the_resume_ends_where_an_uninterrupted_run_does(data, tmp_path):
    whole = Engine(data, config(data))
    whole.run()
    engine = Engine(data, config(data))
    engine.run(lambda e: engine.stop() if e.kind == ev.PROGRESS and e.stage == "joint" and e.iteration == 2
               else None, checkpoint_dir=tmp_path)
    payload = load_checkpoint(tmp_path / "last.pt")
    assert (payload["stage_iter"], payload["joint_average"]["count"]) == (2, 2)
    resumed = Engine.from_checkpoint(tmp_path / "last.pt", data)
    assert resumed.average is not None and resumed.average.count == 2
    resumed.run(checkpoint_dir=tmp_path)
    for key, value in resumed.unet.state_dict().items():
        assert torch.allclose(value.float(), whole.unet.state_dict()[key].float(), atol=1e-5), key
    assert "joint_average" not in load_checkpoint(tmp_path / "last.pt")  # finished: the mean is the model


def test_the_mean_is_validated_and_can_be_the_best(data):
    train, val = split_validation(data, 1)
    engine = Engine(train, config(train, eval_every=2), val=val)
    engine.run()
    assert [h["stage"] for h in engine.history][-1] == "joint average"
    assert engine.history[-1]["global_iteration"] == 6
