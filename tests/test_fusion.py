"""Fusion of per-prompt SAM masks into one pseudo-label and a confidence map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_samatch.core.errors import ConfigError, DataError
from napari_samatch.core.sam.fusion import fuse
from napari_samatch.core.sam.prompts import Prompts, prompts_from_labels

torch.set_num_threads(1)

DATA = Path(__file__).parents[2] / "shared" / "data"


@pytest.fixture
def acdc_slice() -> np.ndarray:
    """The label of a real ACDC slice that shows all three structures."""
    h5py = pytest.importorskip("h5py")
    folder = DATA / "ACDC" / "data" / "slices"
    if not folder.is_dir():
        pytest.skip(f"ACDC slices not found at {folder} (shared data absent)")
    for f in sorted(folder.glob("*.h5"))[:50]:
        with h5py.File(f, "r") as h:
            lab = np.asarray(h["label"])
        if set(np.unique(lab).tolist()) == {0, 1, 2, 3}:
            return lab
    pytest.skip("no ACDC slice with all three structures among the first 50")


def make_prompts(image_index, class_index, num_images=1, size=(32, 32)) -> Prompts:
    n = len(image_index)
    return Prompts(image_index=torch.tensor(image_index, dtype=torch.long),
                   class_index=torch.tensor(class_index, dtype=torch.long),
                   boxes=torch.zeros(n, 4), points=None, point_labels=None, scores=torch.ones(n),
                   num_images=num_images, frame_size=size)


def logit(p: torch.Tensor) -> torch.Tensor:
    return torch.logit(p.clamp(1e-6, 1 - 1e-6))


def disk(h, w, cy, cx, r):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_overlap_resolution_nested_and_by_probability():
    p = torch.zeros(2, 32, 32)
    p[0, 0:20, 0:20] = 0.7   # class 1, 400 px
    p[1, 10:16, 10:16] = 0.9  # class 2, 36 px, inside class 1
    p[1, 16:18, 10:16] = 0.6  # class 2 continues with a lower probability than class 1's 0.7
    pr = make_prompts([0, 0], [1, 2])
    lab, conf = fuse(logit(p), pr, 3, nested=True)
    assert torch.all(lab[0, 10:18, 10:16] == 2)  # smaller mask wins the whole overlap
    assert lab[0, 0, 0] == 1 and lab[0, 25, 25] == 0
    lab, conf = fuse(logit(p), pr, 3, nested=False)
    assert torch.all(lab[0, 10:16, 10:16] == 2)
    assert torch.all(lab[0, 16:18, 10:16] == 1)  # 0.7 beats 0.6
    assert torch.allclose(conf[0, 16, 10], torch.tensor(0.7))


def test_nested_disk_and_lv_give_a_ring_myocardium():
    h = w = 48
    outer, inner = disk(h, w, 24, 24, 14), disk(h, w, 24, 24, 8)
    logits = torch.stack([torch.where(outer, 6.0, -6.0),  # SAM's answer to the myocardium box: the disk
                          torch.where(inner, 6.0, -6.0)])  # LV
    lab, conf = fuse(logits, make_prompts([0, 0], [2, 3], size=(h, w)), 4)
    assert torch.equal(lab[0] == 2, outer & ~inner)
    assert torch.equal(lab[0] == 3, inner)
    assert torch.equal(lab[0] == 0, ~outer)
    # with nested=False the disk and LV tie at equal probability: lower class wins, no ring
    lab2, _ = fuse(logits, make_prompts([0, 0], [2, 3], size=(h, w)), 4, nested=False)
    assert torch.equal(lab2[0] == 2, outer)


def test_real_slice_with_perfect_sam_fuses_back_to_ground_truth(acdc_slice):
    gt = torch.from_numpy(acdc_slice).long()[None]
    pr = prompts_from_labels(gt, 4)
    masks = []
    for c in pr.class_index.tolist():  # an ideal SAM that returns the filled disk for the myocardium
        m = (gt[0] == c) | ((gt[0] == 3) if c == 2 else False)
        masks.append(torch.where(m, 8.0, -8.0))
    lab, _ = fuse(torch.stack(masks), pr, 4)
    assert torch.equal(lab, gt)


def test_missing_class_contributes_nothing():
    p = torch.zeros(1, 32, 32)
    p[0, 4:12, 4:12] = 0.95
    lab, conf = fuse(logit(p), make_prompts([0], [2]), 4)
    assert set(lab.unique().tolist()) == {0, 2}
    assert torch.allclose(conf[0, 0, 0], torch.tensor(1.0), atol=1e-5)
    # an empty batch of prompts: all background
    lab, conf = fuse(torch.zeros(0, 32, 32), make_prompts([], [], num_images=2), 4)
    assert lab.shape == (2, 32, 32) and torch.all(lab == 0) and torch.all(conf == 1)


def test_confidence_in_unit_interval_and_low_near_half():
    p = torch.linspace(0, 1, 32 * 32).view(1, 32, 32)
    lab, conf = fuse(logit(p), make_prompts([0], [1]), 2)
    assert conf.min() >= 0 and conf.max() <= 1
    near = (p[0] - 0.5).abs() < 0.02
    assert conf[0][near].max() < 0.53
    assert torch.equal(lab[0] == 1, p[0] > 0.5)
    far = (p[0] - 0.5).abs() > 0.45
    assert conf[0][far].min() > 0.94


def test_several_prompts_of_one_class_combine_with_max():
    p = torch.zeros(3, 32, 32)
    p[0, 0:10, 0:10] = 0.8
    p[1, 20:30, 20:30] = 0.9
    p[1, 5:8, 5:8] = 0.3     # the second component's mask is unsure where the first is sure
    p[2, 0:5, 25:30] = 0.99  # another image
    pr = make_prompts([0, 0, 1], [1, 1, 1], num_images=2)
    lab, conf = fuse(logit(p), pr, 2)
    assert torch.all(lab[0, 0:10, 0:10] == 1) and torch.all(lab[0, 20:30, 20:30] == 1)
    assert torch.allclose(conf[0, 6, 6], torch.tensor(0.8))
    assert lab[1].sum() == 25 and lab[0].sum() == 200


def test_iou_prediction_scales_confidence():
    p = torch.zeros(2, 16, 16)
    p[0, :8] = 0.9
    p[1, :4] = 0.95  # same class, wins where both speak
    lab, conf = fuse(logit(p), make_prompts([0, 0], [1, 1], size=(16, 16)), 2,
                     iou_pred=torch.tensor([0.5, 0.8]))
    assert torch.allclose(conf[0, 6, 0], torch.tensor(0.45))
    assert torch.allclose(conf[0, 2, 0], torch.tensor(0.76))


def test_match_fallback_and_disagreement():
    b, c, h, w = 1, 4, 16, 16
    mp = torch.zeros(b, c, h, w)
    mp[:, 0] = 1.0
    mp[0, :, 0:4, 0:4] = torch.tensor([0.1, 0.0, 0.0, 0.9]).view(4, 1, 1)    # LV, unprompted
    mp[0, :, 8:12, 8:12] = torch.tensor([0.2, 0.8, 0.0, 0.0]).view(4, 1, 1)  # RV, prompted
    p = torch.zeros(1, h, w)
    p[0, 8:10, 8:12] = 0.9  # SAM keeps only half of the RV region
    p[0, 10:12, 8:12] = 0.3
    lab, conf = fuse(logit(p), make_prompts([0], [1], size=(h, w)), c, match_probs=mp,
                     disagreement_scale=0.5)
    assert torch.all(lab[0, 0:4, 0:4] == 3)
    assert torch.allclose(conf[0, 0:4, 0:4], torch.tensor(0.9))
    assert torch.all(lab[0, 10:12, 8:12] == 0)  # a prompted class is not overruled
    assert torch.allclose(conf[0, 10, 8], torch.tensor(0.35))  # (1 - 0.3) * 0.5, Match disagrees
    assert torch.allclose(conf[0, 8, 8], torch.tensor(0.9))


def test_unprompted_class_keeps_its_pixels_under_another_mask():
    # only the myocardium got a box; SAM answers with the filled disk. The Match model's LV inside it
    # had no prompt, so SAM cannot speak for it: the LV keeps its pixels and the ring stays a ring.
    h = w = 48
    outer, inner = disk(h, w, 24, 24, 14), disk(h, w, 24, 24, 8)
    mp = torch.zeros(1, 4, h, w)
    mp[0, 0] = (~outer).float()
    mp[0, 2] = (outer & ~inner).float() * 0.9
    mp[0, 3] = inner.float() * 0.6
    mp[0, 0] += (outer & ~inner).float() * 0.1 + inner.float() * 0.4
    logits = torch.where(outer, 6.0, -6.0).unsqueeze(0)
    lab, conf = fuse(logits, make_prompts([0], [2], size=(h, w)), 4, match_probs=mp)
    assert torch.equal(lab[0] == 3, inner)
    assert torch.equal(lab[0] == 2, outer & ~inner)
    assert torch.allclose(conf[0][inner], torch.tensor(0.6))  # the Match model's own confidence


def test_shape_errors():
    pr = make_prompts([0], [1])
    with pytest.raises(DataError):
        fuse(torch.zeros(1, 16, 16), pr, 2)
    with pytest.raises(ConfigError):
        fuse(torch.zeros(1, 32, 32), pr, 1)
    with pytest.raises(DataError):
        fuse(torch.zeros(1, 32, 32), make_prompts([0], [3]), 3)
    with pytest.raises(DataError):
        fuse(torch.zeros(1, 32, 32), pr, 2, match_probs=torch.zeros(1, 3, 32, 32))
    lab, _ = fuse(torch.zeros(1, 1, 32, 32), pr, 2)  # SAM's (P, 1, H, W) is accepted
    assert lab.shape == (1, 32, 32)
