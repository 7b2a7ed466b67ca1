"""The painted slices' prior: shape interpolation (nested rings, shrinking, extrapolation) and its fusion."""

from __future__ import annotations

import numpy as np
import torch

from napari_samatch.core.prior.interpolation import interpolate_labels, nearest_labels
from napari_samatch.core.prior.prior import fuse_prior, gate_to_prior, one_painted_slice_note, slice_prior


def disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def ring_slice(r_out: float, r_in: float, shape=(64, 64)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[disk(shape, (32, 32), r_out)] = 2  # the myocardium ring...
    lab[disk(shape, (32, 32), r_in)] = 3   # ...around the LV
    return lab


def test_nested_ring_is_interpolated_as_a_ring_with_radii_in_between():
    vol = np.zeros((5, 64, 64), np.uint8)
    vol[0], vol[4] = ring_slice(12, 8), ring_slice(20, 14)
    out = interpolate_labels(vol, [0, 4], 4)
    mid = out.labels[2]
    assert (mid == 3).sum() > 0 and (mid == 2).sum() > 0
    r_lv = np.sqrt((mid == 3).sum() / np.pi)
    r_epi = np.sqrt(((mid == 2) | (mid == 3)).sum() / np.pi)
    assert 10 < r_lv < 12 and 15 < r_epi < 17  # halfway: 11 and 16
    assert mid[32, 32] == 3  # the LV stays inside the ring, not swallowed by it
    assert np.array_equal(out.labels[0], vol[0]) and out.confidence[0].min() == 1.0


def test_a_class_on_one_side_only_shrinks_to_nothing():
    vol = np.zeros((5, 64, 64), np.uint8)
    vol[0][disk((64, 64), (32, 32), 16)] = 1
    vol[4][disk((64, 64), (10, 10), 3)] = 3  # painted, but without class 1
    out = interpolate_labels(vol, [0, 4], 4)
    areas = [(out.labels[z] == 1).sum() for z in range(5)]
    assert areas[0] > areas[1] > areas[2] > areas[3] >= 0 and areas[4] == 0


def test_extrapolation_copies_the_outermost_painted_slice_or_leaves_it_empty():
    vol = np.zeros((6, 32, 32), np.uint8)
    vol[2] = 1
    vol[2][:4] = 0
    near = interpolate_labels(vol, [2], 2)
    assert np.array_equal(near.labels[0], vol[2]) and np.array_equal(near.labels[5], vol[2])
    assert near.confidence[5].max() < near.confidence[3].max() < 1.0  # fades with the distance
    none = interpolate_labels(vol, [2], 2, extrapolate="none")
    assert not none.labels[0].any() and none.confidence[0].max() == 0
    assert np.array_equal(nearest_labels(vol, [2])[4], vol[2])


def test_between_decay_changes_only_the_confidence_of_slices_between_painted_ones():
    vol = np.zeros((6, 64, 64), np.uint8)
    vol[1], vol[3] = ring_slice(12, 8), ring_slice(16, 10)
    base = interpolate_labels(vol, [1, 3], 4)
    slow = interpolate_labels(vol, [1, 3], 4, between_decay=10.0)
    assert np.array_equal(slow.labels, base.labels)
    assert slow.confidence[2].max() > base.confidence[2].max()  # between the two painted slices
    for z in (0, 4, 5):  # outside the painted range: copies of the outermost, as before
        assert np.array_equal(slow.confidence[z], base.confidence[z])


def test_slice_prior_groups_volumes_and_orders_slices_by_position():
    s = 32
    a, b = ring_slice(10, 6, (s, s)), ring_slice(14, 9, (s, s))
    labels = torch.full((7, s, s), -1, dtype=torch.long)
    # volume "v" stored out of order: positions 2, 0, 1; volume "w" never painted
    labels[1], labels[2] = torch.from_numpy(a).long(), torch.from_numpy(b).long()
    groups = ["v", "v", "v", "w", "w", "w", "w"]
    positions = [2, 0, 1, 0, 1, 2, 3]
    lab, conf = slice_prior(labels, groups, positions, 4)
    assert (lab[0] == 3).sum() > 0 and conf[0].max() > 0  # position 2: extrapolated from position 1
    assert torch.equal(lab[1], labels[1]) and float(conf[1].min()) == 1.0
    assert float(conf[3:].max()) == 0.0 and int(lab[3:].max()) == 0  # an unpainted volume: no opinion


def test_fuse_prior_is_a_distribution_weighted_by_confidence():
    probs = torch.softmax(torch.randn(2, 4, 8, 8), 1)
    prior = torch.randint(0, 4, (2, 8, 8))
    conf = torch.rand(2, 8, 8)
    fused = fuse_prior(probs, prior, conf, 1.0)
    assert torch.allclose(fused.sum(1), torch.ones(2, 8, 8), atol=1e-6)
    sure = torch.ones(2, 8, 8)
    assert torch.equal(fuse_prior(probs, prior, sure, 1.0).argmax(1), prior)
    assert torch.equal(fuse_prior(probs, prior, conf, 0.0), probs)


def test_the_first_event_of_a_run_is_the_interpolation_as_pseudo_labels():
    from napari_samatch.core.config import preset
    from napari_samatch.core.data.datasets import phantom
    from napari_samatch.core.engine.engine import Engine

    data, vol, labeled = phantom(shape=(8, 64, 64))
    config = preset("quick", size=64, method="supervised", warmup_method="supervised", warmup_iters=2, sam_iters=0,
                    joint_iters=0, eval_every=0, checkpoint_every=0, device="cpu", threads=1)
    kinds = []
    Engine(data, config.replace(num_classes=data.num_classes, class_names=list(data.class_names))).run(
        lambda e: kinds.append((e.kind, e.data)))
    first = [k for k, _ in kinds if k in ("pseudo_labels", "progress")][0]
    assert first == "pseudo_labels"
    d = next(d for k, d in kinds if k == "pseudo_labels")
    assert len(d["indices"]) == len(data) and len(d["slice_confidence"]) == len(data)
    assert d["raw"].shape == (len(data), 64, 64) and d["confidence"].max() == 1.0


def test_review_score_ranks_a_disputed_slice_below_an_agreed_one():
    from napari_samatch.core.engine.review import review_score, slice_agreement

    answer = np.zeros((3, 8, 8), np.uint8)
    answer[:, 2:6, 2:6] = 1
    match = answer.copy()
    match[1] = 0  # the Match model alone sees nothing on slice 1
    match[1, 2:4, 2:4] = 1
    empty = np.zeros_like(answer)
    assert np.allclose(slice_agreement(answer, answer), 1.0)
    assert np.allclose(slice_agreement(empty, empty), 1.0)  # nothing to disagree on
    assert slice_agreement(answer, match)[1] == 2 * 4 / (16 + 4)
    conf = np.full(answer.shape, 0.9, np.float32)
    score = review_score(answer, conf, match, prior=answer)
    assert score[1] < score[0] == score[2]
    assert np.allclose(review_score(answer, conf, answer, prior=None), (0.9 + 1.0) / 2)


def test_gate_drops_look_alikes_away_from_the_prior_and_keeps_what_touches_it():
    prior = np.zeros((1, 64, 64), np.uint8)
    prior[0, 20:30, 20:30] = 1
    answer = np.zeros_like(prior)
    answer[0, 24:36, 24:36] = 1   # overlaps the prior: kept whole, also where it grew beyond it
    answer[0, 50:58, 50:58] = 1   # a look-alike far away: dropped
    answer[0, 2:6, 2:6] = 2       # a class the prior does not show on this slice: left alone
    out = gate_to_prior(answer, prior, margin=3)
    assert (out[0, 24:36, 24:36] == 1).all() and not out[0, 50:58, 50:58].any()
    assert (out[0, 2:6, 2:6] == 2).all()
    assert answer[0, 50, 50] == 1  # the input is not edited


def test_gate_leaves_a_class_the_prior_shows_as_several_objects():
    prior = np.zeros((1, 64, 64), np.uint8)
    prior[0, 5:10, 5:10] = 1
    prior[0, 40:45, 5:10] = 1     # two lesions painted: a third one elsewhere may be real
    answer = prior.copy()
    answer[0, 50:58, 50:58] = 1
    assert np.array_equal(gate_to_prior(answer, prior, margin=3), answer)


def test_the_native_prior_keeps_the_slices_size_and_its_decay_only_changes_confidence():
    from napari_samatch.core.data.datasets import phantom
    from napari_samatch.core.prior.prior import NativePrior

    data, _, _ = phantom(shape=(8, 96, 96))
    every = list(range(len(data)))
    lab, conf = NativePrior(data, data.num_classes, 64).of(every)
    slow_lab, slow_conf = NativePrior(data, data.num_classes, 64, slice_decay=5.0).of(every)
    assert lab.shape == conf.shape == (len(data), 96, 96)
    assert torch.equal(lab, slow_lab)  # the shapes are the same interpolation...
    unpainted = [i for i in every if data.labels[i] is None]
    assert unpainted and bool((slow_conf[unpainted] >= conf[unpainted]).all())  # ...trusted longer between slices
    assert float(slow_conf[unpainted].mean()) > float(conf[unpainted].mean())


def test_one_painted_slice_of_a_volume_is_called_a_gamble_and_nothing_else_is():
    vol = ["v"] * 5
    assert "paint a second slice" in one_painted_slice_note(vol, [False, False, True, False, False])
    assert one_painted_slice_note(vol, [True, False, False, True, False]) is None  # two painted
    assert one_painted_slice_note(["v", "v"], [True, False]) is None  # nothing between to guess
    assert one_painted_slice_note(["a"] * 3 + ["b"] * 3, [True, False, False, True, False, False]) is None  # a cohort
    assert one_painted_slice_note(["a", "b", "c"], [True, False, False]) is None  # 2D images, one each


def test_the_first_result_at_native_size_is_the_answers_prior_without_its_wide_copies():
    """The run's first preview of a whole volume takes the native prior as stored (uint8 labels, float16
    confidence) instead of its long and float tensors (1 GB at once for a 300 x 512 x 512 CT): the same preview."""
    from napari_samatch.core.config import preset
    from napari_samatch.core.data.datasets import phantom
    from napari_samatch.core.engine.engine import Engine
    from napari_samatch.core.engine.review import _Answer, _slice_confidence, slice_confidence

    data, _, _ = phantom(shape=(40, 48, 64))
    config = preset("quick", size=32, device="cpu", threads=1, eval_every=0, checkpoint_every=0)
    engine = Engine(data, config.replace(num_classes=data.num_classes, class_names=list(data.class_names)))
    every = list(range(len(data)))
    first = engine.prior_preview(every, native=True)
    labels, conf = _Answer(engine, every, native=True).prior[:2]  # the answer's own prior
    assert first["raw"].dtype == np.uint8 and first["confidence"].dtype == np.float32
    assert np.array_equal(first["raw"], labels.numpy()) and np.array_equal(first["confidence"], conf.numpy())
    assert first["raw"].shape == (40, 48, 64)
    # the per-slice score, a few slices at a time, is the whole stack's to the bit
    assert np.array_equal(first["slice_confidence"], _slice_confidence(first["raw"], first["confidence"]).tolist())
    assert slice_confidence(first["raw"][:0], first["confidence"][:0]).shape == (0,)
