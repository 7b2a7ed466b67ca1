"""Prompts from confident predictions and from ground-truth labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samatch.core.errors import ConfigError, DataError
from napari_samatch.core.sam.prompts import (
    Prompts,
    erosion_depth,
    label_components,
    prompts_from_labels,
    prompts_from_probs,
)

torch.set_num_threads(1)


def probs_from_labels(labels: torch.Tensor, num_classes: int, conf: float = 0.99) -> torch.Tensor:
    """Softmax-like maps: the labelled class gets ``conf``, the others share the rest."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()
    rest = (1.0 - conf) / (num_classes - 1)
    return onehot * conf + (1 - onehot) * rest


def disk(h, w, cy, cx, r):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_one_square_per_class_gives_exact_boxes_with_shift_and_clipping():
    lab = torch.zeros(1, 64, 64, dtype=torch.long)
    lab[0, 10:20, 30:45] = 1          # rows 10..19, cols 30..44
    lab[0, 0:8, 58:64] = 2            # touches the top and right border
    lab[0, 40:50, 2:12] = 3           # 2 px from the left border
    pr = prompts_from_probs(probs_from_labels(lab, 4), bbox_shift=5)
    assert pr.class_index.tolist() == [1, 2, 3]
    assert pr.image_index.tolist() == [0, 0, 0]
    assert pr.boxes.tolist() == [[25, 5, 49, 24], [53, 0, 63, 12], [0, 35, 16, 54]]
    assert pr.points is None and pr.point_labels is None
    assert torch.allclose(pr.scores, torch.full((3,), 0.99))
    assert pr.num_images == 1 and pr.frame_size == (64, 64) and len(pr) == 3


def test_two_components_largest_and_all():
    lab = torch.zeros(1, 40, 40, dtype=torch.long)
    lab[0, 2:6, 2:6] = 1          # 16 px
    lab[0, 20:30, 20:30] = 1      # 100 px
    lab[0, 35:37, 35:37] = 1      # 4 px, under min_area
    probs = probs_from_labels(lab, 2)
    big = prompts_from_probs(probs, bbox_shift=0)
    assert big.boxes.tolist() == [[20, 20, 29, 29]]
    every = prompts_from_probs(probs, bbox_shift=0, components="all", min_area=10)
    assert every.boxes.tolist() == [[2, 2, 5, 5], [20, 20, 29, 29]]  # raster order of first pixel
    union = prompts_from_probs(probs, bbox_shift=0, components="union")
    assert union.boxes.tolist() == [[2, 2, 36, 36]]


def test_diagonal_touch_is_one_component():
    lab = torch.zeros(1, 20, 20, dtype=torch.long)
    lab[0, 2:6, 2:6] = 1
    lab[0, 6:10, 6:10] = 1  # touches only at a corner: 8-connected
    pr = prompts_from_probs(probs_from_labels(lab, 2), bbox_shift=0, components="all")
    assert pr.boxes.tolist() == [[2, 2, 9, 9]]


def test_absent_and_small_classes_get_no_prompt():
    lab = torch.zeros(1, 32, 32, dtype=torch.long)
    lab[0, 5:15, 5:15] = 2
    lab[0, 20:22, 20:23] = 3  # 6 px < min_area
    pr = prompts_from_probs(probs_from_labels(lab, 4))
    assert pr.class_index.tolist() == [2]
    assert len(prompts_from_probs(probs_from_labels(torch.zeros(2, 16, 16, dtype=torch.long), 4))) == 0


@pytest.mark.parametrize("thresh,expected", [(0.5, [1, 2]), (0.7, [1]), (0.95, [1])])
def test_confidence_threshold(thresh, expected):
    lab = torch.zeros(1, 32, 32, dtype=torch.long)
    lab[0, 2:12, 2:12] = 1
    lab[0, 18:28, 18:28] = 2
    probs = probs_from_labels(lab, 3, conf=0.99)
    probs[0, :, 18:28, 18:28] = torch.tensor([0.4, 0.0, 0.6]).view(3, 1, 1)  # class 2 wins at 0.6
    pr = prompts_from_probs(probs, conf_thresh=thresh)
    assert pr.class_index.tolist() == expected


def test_high_threshold_shrinks_box_to_the_confident_core():
    lab = torch.zeros(1, 40, 40, dtype=torch.long)
    lab[0, 10:30, 10:30] = 1
    probs = probs_from_labels(lab, 2, conf=0.99)
    probs[0, 1, 10:30, 10:30] = 0.8  # uncertain fringe
    probs[0, 1, 14:26, 14:26] = 0.99
    probs[0, 0] = 1 - probs[0, 1]
    assert prompts_from_probs(probs, conf_thresh=0.5, bbox_shift=0).boxes.tolist() == [[10, 10, 29, 29]]
    assert prompts_from_probs(probs, conf_thresh=0.95, bbox_shift=0).boxes.tolist() == [[14, 14, 25, 25]]


def test_batch_keeps_image_index():
    lab = torch.zeros(3, 24, 24, dtype=torch.long)
    lab[0, 1:6, 1:6] = 2
    lab[2, 10:20, 3:9] = 1
    lab[2, 2:8, 15:22] = 2
    pr = prompts_from_probs(probs_from_labels(lab, 3), bbox_shift=1)
    assert pr.image_index.tolist() == [0, 2, 2]
    assert pr.class_index.tolist() == [2, 1, 2]
    assert pr.boxes.tolist() == [[0, 0, 6, 6], [2, 9, 9, 20], [14, 1, 22, 8]]


def _random_blobs(seed: int, b=3, c=4, h=48, w=40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(b, c, h // 4, w // 4, generator=g)
    logits = torch.nn.functional.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False) * 30
    return logits.softmax(dim=1)


def _spiral(n=41) -> torch.Tensor:
    m = np.zeros((n, n), dtype=bool)
    top, left, bottom, right = 0, 0, n - 1, n - 1
    while top <= bottom and left <= right:  # a one-pixel wall spiralling inwards: a long geodesic path
        m[top, left:right + 1] = True
        m[top:bottom + 1, right] = True
        m[bottom, left:right + 1] = True
        m[top + 2:bottom + 1, left] = True
        if top + 2 <= bottom:
            m[top + 2, left:right - 1] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    return torch.from_numpy(m)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("components", ["largest", "all"])
def test_scipy_and_propagation_paths_agree(seed, components):
    probs = _random_blobs(seed)
    kw = dict(conf_thresh=0.6, components=components, min_area=3, points=2, negative_points=1)
    a = prompts_from_probs(probs, method="scipy", **kw)
    b = prompts_from_probs(probs, method="propagate", **kw)
    assert len(a) > 0
    for name in ("image_index", "class_index", "boxes", "points", "point_labels", "scores"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_propagation_partition_matches_scipy_on_spiral_and_blobs():
    masks = torch.stack([_spiral(), torch.rand(41, 41, generator=torch.Generator().manual_seed(3)) > 0.55])
    la, lb = label_components(masks, "scipy"), label_components(masks, "propagate")
    pairs = set(zip(la[masks].tolist(), lb[masks].tolist()))
    assert len(pairs) == len(set(la[masks].tolist())) == len(set(lb[masks].tolist()))
    assert torch.equal(la == 0, lb == 0)
    with pytest.raises(ConfigError):
        label_components(masks, "opencv")


def test_positive_points_lie_inside_the_component_and_spread():
    lab = torch.zeros(1, 60, 60, dtype=torch.long)
    lab[0][disk(60, 60, 30, 30, 12)] = 1
    pr = prompts_from_probs(probs_from_labels(lab, 2), points=3)
    assert pr.point_labels.tolist() == [[1, 1, 1]]
    xy = pr.points[0].long()
    assert xy[0].tolist() == [30, 30]  # the deepest pixel of a disk is its centre
    assert all(lab[0, y, x] == 1 for x, y in xy.tolist())
    assert torch.pdist(pr.points[0].float()).min() >= 4


def test_negative_points_of_a_ring_box_fall_in_the_hole():
    h = w = 64
    ring = disk(h, w, 32, 30, 15) & ~disk(h, w, 32, 30, 8)
    for hole_class in (0, 3):  # a labelled LV pool, or confident background
        lab = torch.zeros(1, h, w, dtype=torch.long)
        lab[0][ring] = 2
        lab[0][disk(h, w, 32, 30, 8)] = hole_class
        pr = prompts_from_probs(probs_from_labels(lab, 4), points=1, negative_points=2)
        myo = (pr.class_index == 2).nonzero().item()
        assert pr.point_labels[myo, 0] == 1
        px, py = pr.points[myo, 0].long().tolist()
        assert ring[py, px]
        nx, ny = pr.points[myo, 1].long().tolist()
        assert pr.point_labels[myo, 1] == 0 and (nx, ny) == (30, 32)


def test_missing_points_are_padding():
    lab = torch.zeros(1, 16, 16, dtype=torch.long)
    lab[0, 4:6, 4:6] = 1  # 4 pixels, box covers nothing else when shift = 0
    lab[0, 10:16, 10:16] = 0
    pr = prompts_from_probs(probs_from_labels(lab, 2), min_area=1, bbox_shift=0, points=6, negative_points=1)
    assert pr.point_labels.tolist() == [[1, 1, 1, 1, -1, -1, -1]]
    assert pr.points[0, 4:].abs().sum() == 0


def test_erosion_depth_of_a_square():
    m = torch.zeros(1, 9, 9, dtype=torch.bool)
    m[0, 1:8, 1:8] = True
    d = erosion_depth(m)
    assert d[0, 4, 4] == 4 and d[0, 1, 1] == 1 and d[0, 0, 0] == 0


def test_labels_union_boxes_ignore_and_jitter():
    lab = torch.zeros(2, 32, 32, dtype=torch.long)
    lab[0, 2:5, 2:5] = 1
    lab[0, 20:24, 25:30] = 1
    lab[1, 10:20, 10:20] = 2
    lab[1, 0:3, :] = -1  # unknown
    pr = prompts_from_labels(lab, 3, bbox_shift=2)
    assert pr.image_index.tolist() == [0, 1] and pr.class_index.tolist() == [1, 2]
    assert pr.boxes.tolist() == [[0, 0, 31, 25], [8, 8, 21, 21]]
    assert torch.all(pr.scores == 1)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    j1 = prompts_from_labels(lab, 3, bbox_shift=4, jitter=True, generator=g1)
    j2 = prompts_from_labels(lab, 3, bbox_shift=4, jitter=True, generator=g2)
    assert torch.equal(j1.boxes, j2.boxes)
    tight = prompts_from_labels(lab, 3, bbox_shift=0).boxes
    wide = prompts_from_labels(lab, 3, bbox_shift=4).boxes
    assert torch.all(j1.boxes[:, :2] <= tight[:, :2]) and torch.all(j1.boxes[:, :2] >= wide[:, :2])
    assert torch.all(j1.boxes[:, 2:] >= tight[:, 2:]) and torch.all(j1.boxes[:, 2:] <= wide[:, 2:])
    with pytest.raises(DataError):
        prompts_from_labels(lab, 2)


def test_numpy_roundtrip_and_to():
    lab = torch.zeros(2, 20, 20, dtype=torch.long)
    lab[1, 5:15, 5:15] = 1
    pr = prompts_from_probs(probs_from_labels(lab, 2), points=1, negative_points=1)
    d = pr.to_numpy_dict()
    assert d["boxes"].dtype == np.float32 and d["frame_size"].tolist() == [20, 20]
    back = Prompts.from_numpy_dict(d)
    assert back.num_images == 2 and back.frame_size == (20, 20)
    for name in ("image_index", "class_index", "boxes", "points", "point_labels", "scores"):
        assert torch.equal(getattr(back, name), getattr(pr, name))
    assert pr.to("cpu").boxes.device.type == "cpu"
    no_pts = Prompts.from_numpy_dict(prompts_from_probs(probs_from_labels(lab, 2)).to_numpy_dict())
    assert no_pts.points is None
    with pytest.raises(DataError):
        Prompts.from_numpy_dict({"boxes": d["boxes"]})


def test_bad_arguments_raise_user_errors():
    probs = probs_from_labels(torch.zeros(1, 8, 8, dtype=torch.long), 2)
    with pytest.raises(ConfigError):
        prompts_from_probs(probs, conf_thresh=1.5)
    with pytest.raises(ConfigError):
        prompts_from_probs(probs, components="biggest")
    with pytest.raises(DataError):
        prompts_from_probs(probs[0])
