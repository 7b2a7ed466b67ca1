"""Training frame <-> napari layer conversions used by the Review dock (no viewer needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samatch._widgets._layers import (
    PromptTable,
    display_to_frame_box,
    display_to_frame_points,
    frame_to_display_box,
    frame_to_display_points,
    preview_to_display,
    slice_indices,
    slice_shape,
    slice_view,
)
from napari_samatch.core.sam.prompts import Prompts


@pytest.mark.parametrize("hw", [(64, 64), (160, 200), (37, 90)])
def test_box_and_point_round_trip(hw):
    S = 64
    box = np.array([[3, 10, 40, 60], [0, 0, 63, 63]], float)
    back = display_to_frame_box(frame_to_display_box(box, S, hw), S, hw)
    np.testing.assert_allclose(back, box, atol=1e-9)
    pts = np.array([[5.0, 7.0], [63.0, 0.0]])
    np.testing.assert_allclose(display_to_frame_points(frame_to_display_points(pts, S, hw), S, hw), pts, atol=1e-9)


def test_box_edges_follow_pixel_edges():
    # training pixels 0..31 of 64 cover display pixels 0..63 of 128: edges at -0.5 and 63.5
    rect = frame_to_display_box(np.array([0, 0, 31, 31]), 64, (128, 128))[0]
    np.testing.assert_allclose(rect, [-0.5, -0.5, 63.5, 63.5])


def _prompts_dict():
    return Prompts(
        image_index=torch.tensor([0, 0, 1]), class_index=torch.tensor([1, 3, 2]),
        boxes=torch.tensor([[2.0, 4, 20, 30], [10, 10, 50, 40], [0, 0, 8, 8]]),
        points=torch.tensor([[[5.0, 6], [0, 0]], [[20, 20], [30, 25]], [[1, 1], [0, 0]]]),
        point_labels=torch.tensor([[1, -1], [1, 0], [1, -1]]),
        scores=torch.tensor([0.9, 0.8, 0.7]), num_images=2, frame_size=(64, 64)).to_numpy_dict()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_table_to_layers_and_back(axis):
    hw = (96, 128)
    t = PromptTable.from_prompts(_prompts_dict(), [4, 7], 64, hw)
    assert t.box_slice.tolist() == [4, 4, 7] and t.box_class.tolist() == [1, 3, 2]
    assert t.point_label.tolist() == [1, 1, 0, 1]  # padding dropped
    shapes, pts = t.shapes_data(axis, 3), t.points_data(axis, 3)
    assert all(s.shape == (4, 3) for s in shapes) and pts.shape == (4, 3)
    assert {int(s[0, axis]) for s in shapes} == {4, 7}
    back = PromptTable.from_layers(shapes, t.box_class, t.box_score, pts, t.point_class, t.point_label, axis, 3)
    for i in (4, 7):
        assert back.signature(i) == t.signature(i)


def test_to_prompts_for_one_slice_and_point_only_class():
    hw = (128, 128)
    t = PromptTable.from_prompts(_prompts_dict(), [4, 7], 64, hw)
    p = t.to_prompts(4, 64, hw)
    assert p.num_images == 1 and p.frame_size == (64, 64) and p.class_index.tolist() == [1, 3]
    np.testing.assert_allclose(p.boxes.numpy(), [[2, 4, 20, 30], [10, 10, 50, 40]], atol=1e-5)
    assert p.point_labels.shape == (2, 2) and p.point_labels[0].tolist() == [1, -1]
    # a class with only a (positive) point gets a box around it
    t2 = PromptTable(point=np.array([[50.0, 60.0]]), point_slice=np.array([0]), point_class=np.array([2]),
                     point_label=np.array([1]))
    p2 = t2.to_prompts(0, 64, hw)
    assert p2.class_index.tolist() == [2] and len(p2.boxes) == 1
    x0, y0, x1, y1 = p2.boxes[0].tolist()
    assert x0 < 30 < x1 and y0 < 25 < y1


def test_preview_to_display_resizes_and_scores():
    S, hw = 32, (64, 48)
    raw = np.zeros((2, S, S), np.uint8)
    raw[0, 8:16, 8:16] = 1
    conf = np.full((2, S, S), 0.5, np.float32)
    conf[0, 8:16, 8:16] = 0.9
    d = preview_to_display({"indices": [3, 5], "raw": raw, "refined": raw, "confidence": conf,
                            "prompts": _prompts_dict()}, S, hw)
    assert d["labels"].shape == (2, 64, 48) and d["confidence"].shape == (2, 64, 48)
    assert d["labels"].dtype == np.uint8 and set(np.unique(d["labels"])) == {0, 1}
    assert d["mean_confidence"][0] == pytest.approx(0.9, abs=0.05)  # structure pixels only
    assert d["mean_confidence"][1] == pytest.approx(0.5)
    assert d["prompts"].box_slice.tolist() == [3, 3, 5]


def test_slice_helpers():
    arr = np.zeros((3, 4, 5), np.uint8)
    assert slice_shape(arr.shape, 1) == (3, 5) and slice_shape((7, 8), 0) == (7, 8)
    slice_view(arr, 2, 1)[...] = 9
    assert (arr[:, 2, :] == 9).all() and arr.sum() == 9 * 15
    mask = np.zeros((3, 5), bool)
    mask[1, 4] = True
    idx = slice_indices(mask, 2, 1, 3)
    assert [int(i[0]) for i in idx] == [1, 2, 4]
