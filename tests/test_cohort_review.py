"""The cross-cohort review (core, headless): each volume's slices scored by the Match model, one list across the
cohort least confident first, accepting a reviewed slice into any volume's painting, the next round training
with it from the current models, and the cohort with its paintings in a saved session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cohort_helpers import SHAPE, write_cohort
from napari_samatch.core.config import RunConfig
from napari_samatch.core.data.cohort_state import CohortState
from napari_samatch.core.data.session import SessionState, load_session, save_session
from napari_samatch.core.engine.cohort_review import CohortReview, predict_with_confidence, review_cohort
from napari_samatch.core.engine.engine import Engine
from napari_samatch.core.engine.review import slice_confidence
from napari_samatch.core.errors import DataError
from napari_samatch.core.match.inference import class_map, predict_volume, volume_probs
from napari_samatch.core.match.unet import UNet


def _disc(k: int) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[:, 6:16, 4 + k:12 + k] = 1
    return lab


def _noisy_disc(k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(k).normal(0, 0.1, SHAPE).astype(np.float32) + _disc(k), _disc(k)


@pytest.fixture
def cohort(tmp_path) -> tuple[Path, Path]:
    """p1 (a label file painting slices 1 and 4), p2 and p3 (no label file)."""
    return write_cohort(tmp_path, _noisy_disc, lambda k: np.diag([1.0, 1.0, 3.0, 1.0]))


def _config(**kw) -> RunConfig:
    base = dict(method="supervised", warmup_method="supervised", warmup_iters=0, sam_iters=0, joint_iters=2,
                size=32, batch_labeled=2, batch_unlabeled=2, eval_every=0, checkpoint_every=0, device="cpu",
                threads=1, amp=False, num_classes=2, class_names=["background", "disc"])
    return RunConfig(**{**base, **kw})


def test_prediction_and_scores_of_a_volume():
    torch_unet = UNet(1, 2)
    image = np.random.default_rng(0).normal(0, 1, (5, 20, 18)).astype(np.float32)
    labels, scores = predict_with_confidence(torch_unet, image, 32, axis=0, batch_size=2)
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert np.array_equal(labels, predict_volume(torch_unet, image, 32))  # the mask "Predict all" writes
    assert scores.shape == (5,) and ((scores >= 0.5) & (scores <= 1)).all()  # a 2-class max probability
    along_x, by_x = predict_with_confidence(torch_unet, image, 32, axis=2)
    assert along_x.shape == image.shape and by_x.shape == (18,)
    flat, one = predict_with_confidence(torch_unet, image[0], 32)
    assert flat.shape == (20, 18) and one.shape == (1,)


@pytest.mark.parametrize("source", ["phantom", "acdc"])
def test_the_review_labels_are_the_masks_and_the_confidence_the_top_probability(source, request):
    """``predict_with_confidence`` reduces channels first (``class_map_and_confidence``, the fast way for ``max``);
    its labels equal ``class_map``'s (the masks "Predict all" writes: argmax over a channels-last copy) and its
    scores those of the top probability taken over that copy, bit for bit: the layout is a matter of speed only."""
    if source == "acdc":
        from napari_samatch.core.data.io import read_ssl4mis_volumes

        image = read_ssl4mis_volumes(request.getfixturevalue("acdc"), "val.list")[0].image  # (10, 256, 224)
    else:
        from napari_samatch.core.data.sample import make_cardiac_phantom

        image = make_cardiac_phantom((6, 96, 80)).image
    torch.manual_seed(0)
    unet = UNet(1, 4)
    labels, scores = predict_with_confidence(unet, image, 64, batch_size=4)
    other_labels, other_scores = np.zeros(image.shape, np.uint8), np.zeros(len(image))
    for start, probs in volume_probs(unet, image, 64, batch_size=4):
        conf, lab = probs.permute(0, 2, 3, 1).contiguous().max(-1)  # channels last
        assert torch.equal(lab, class_map(probs))
        lab_np, conf_np = lab.numpy().astype(np.uint8), conf.float().numpy()
        other_labels[start:start + len(lab_np)] = lab_np
        other_scores[start:start + len(lab_np)] = slice_confidence(lab_np, conf_np)
    assert np.array_equal(labels, other_labels) and np.array_equal(scores, other_scores)
    assert len(np.unique(labels)) > 1  # the model answers more than one class: the comparison means something


def test_one_list_across_the_cohort_least_confident_first(cohort):
    state = CohortState.open(*cohort)
    engine = Engine(state.training_slices(["background", "disc"]), _config())
    review = CohortReview()
    seen = []
    for vol in review_cohort(engine, state):
        seen.append(vol.member)
        review.add(vol)
    assert seen == ["p1", "p2", "p3"]
    rows = review.rows()
    assert len(rows) == 18 - 2  # p1's labeled slices 1 and 4 are the user's, not the model's
    assert (1, 4) not in [(r.index,) for r in rows if r.member == "p1"]
    assert {(r.member, r.index) for r in rows if r.member == "p1"} == {("p1", i) for i in (0, 2, 3, 5)}
    confidences = [r.confidence for r in rows]
    assert confidences == sorted(confidences) and review.rows(limit=3) == rows[:3]
    review.drop(rows[0].member, rows[0].index)
    assert review.rows()[0] == rows[1] and len(review.rows()) == 15
    # stopping between volumes: nothing more is read
    assert [v.member for v in review_cohort(engine, state, should_stop=lambda: True)] == []


def test_accepting_a_slice_of_any_volume_labels_it_for_the_next_round(cohort):
    state = CohortState.open(*cohort)
    engine = Engine(state.training_slices(["background", "disc"]), _config())
    engine.run()
    before = dict(state.paintings)  # a training snapshot: accepting must not change it
    reviewed = _disc(3)[2]
    assert state.accept("p3", 2, reviewed)  # a volume never shown nor painted
    assert state.labeled("p3") == [2] and np.array_equal(state.paintings["p3"][2], reviewed)
    assert before == {}
    assert state.accept("p1", 3, _disc(1)[3])  # over a label file: its slices 1 and 4 stay
    assert state.labeled("p1") == [1, 3, 4]
    snapshot = state.paintings["p1"]
    assert not state.accept("p1", 0, np.zeros(SHAPE[1:], np.uint8))  # background only: not a labeled slice
    assert state.labeled("p1") == [1, 3, 4] and state.paintings["p1"] is not snapshot
    with pytest.raises(DataError, match="no slice 9"):
        state.accept("p2", 9, reviewed)
    with pytest.raises(DataError, match="shape"):
        state.accept("p2", 0, np.zeros((3, 3), np.uint8))

    # the next round starts from the current models, with the accepted slices labeled
    weights = {k: v.clone() for k, v in engine.unet.state_dict().items()}
    data = state.training_slices(["background", "disc"])
    engine.next_round(data, _config(joint_iters=1))
    assert [data.ids[i] for i in data.labeled_indices()] == ["p1_slice_1", "p1_slice_3", "p1_slice_4", "p3_slice_2"]
    assert all((engine.unet.state_dict()[k] == v).all() for k, v in weights.items())
    assert engine.stage_index == 0 and engine.labeled_idx.tolist() == data.labeled_indices()
    engine.run()


def test_the_cohort_and_its_paintings_in_a_saved_session(cohort, tmp_path):
    state = CohortState.open(*cohort)
    state.accept("p3", 2, _disc(3)[2])
    painted = state.load("p2").labels
    painted[5] = _disc(2)[5]
    assert state.keep("p2", painted)
    folder = tmp_path / "session"
    save_session(folder, SessionState(name="cohort", cohort=state.session_doc(), cohort_paintings=state.paintings))
    assert sorted(p.name for p in folder.iterdir()) == ["cohort_paintings.1.npz", "session.json"]
    back = load_session(folder)
    assert back.cohort["images"] == str(cohort[0]) and back.cohort["painted"] == ["p2", "p3"]
    again = CohortState.from_session(back.cohort, back.cohort_paintings)
    assert [(r.name, r.labeled, r.painted_here) for r in again.rows()] == [
        ("p1", 2, False), ("p2", 1, True), ("p3", 1, True)]
    assert np.array_equal(again.paintings["p2"], state.paintings["p2"])

    # a second save replaces the first generation's file (atomically, the old one removed after)
    state.accept("p1", 0, _disc(1)[0])
    save_session(folder, SessionState(name="cohort", cohort=state.session_doc(), cohort_paintings=state.paintings))
    assert sorted(p.name for p in folder.iterdir()) == ["cohort_paintings.2.npz", "session.json"]
    assert sorted(load_session(folder).cohort_paintings) == ["p1", "p2", "p3"]

    # a painted volume gone from the folder: a sentence, never a silent loss
    (cohort[0] / "p3.nii.gz").unlink()
    with pytest.raises(DataError, match="p3, which are no longer in"):
        CohortState.from_session(back.cohort, back.cohort_paintings)
    assert load_session(tmp_path / "session").cohort is not None
    plain = tmp_path / "plain"
    save_session(plain, SessionState(name="x"))
    assert load_session(plain).cohort is None


def test_keeping_the_shown_member_while_the_next_is_read_reads_no_file(cohort, monkeypatch):
    """The dock reads the next member in a worker while the shown one may still be kept (an autosave, a Start):
    keep() compares with the labels as loaded, and accept() starts from the shown layer, never from a file."""
    import napari_samatch.core.data.cohort_state as cs

    state = CohortState.open(*cohort)
    shown = state.load("p1").labels
    state.load("p2")  # the next member, read while p1 is still shown

    def no_read(*_a, **_k):
        raise AssertionError("a file was read on the main thread")

    monkeypatch.setattr(cs, "read_volume", no_read)
    monkeypatch.setattr(cs, "read_label", no_read)
    assert not state.keep("p1", shown)
    shown[0] = _disc(1)[0]
    assert state.keep("p1", shown) and state.labeled("p1") == [0, 1, 4]
    layer = np.zeros(SHAPE, np.uint8)
    layer[5] = _disc(3)[5]  # p3's shown layer, painted but not yet kept
    assert state.accept("p3", 2, _disc(3)[2], base=layer)
    assert state.labeled("p3") == [2, 5] and not layer[2].any()
