"""SAM's masks checked against the painted slices' prior: a box that returns the neighbouring structure is
replaced by its class's box on the prior (prompts_on_prior, Refiner.checked)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_samatch.core.config import preset
from napari_samatch.core.errors import DataError
from napari_samatch.core.prior.prior import prompts_on_prior
from napari_samatch.core.sam.prompts import Prompts, prompts_from_labels
from napari_samatch.core.sam.refiner import PriorCheck, Refiner

S = 32


def two_cavities() -> torch.Tensor:
    """One 32 x 32 slice: class 1 on the left, class 3 on the right, side by side (ACDC's RV and LV)."""
    prior = torch.zeros(1, S, S, dtype=torch.long)
    prior[0, 8:24, 4:16] = 1
    prior[0, 8:24, 16:28] = 3
    return prior


def test_a_mask_on_another_structure_of_the_prior_is_dropped_and_nothing_else():
    prior = two_cavities()
    masks = torch.zeros(4, S, S, dtype=torch.bool)
    masks[0, 8:24, 4:16] = True   # class 3's prompt, its mask on the prior's class 1: the swap
    masks[1, 8:24, 16:28] = True  # class 3 on class 3
    masks[2, 0:6, 0:6] = True     # class 3 on background (the prior may be wrong far from painted slices)
    masks[3, 8:24, 4:16] = True   # class 2, which the prior does not show on this slice: nothing to check by
    keep = prompts_on_prior(masks, torch.zeros(4, dtype=torch.long), torch.tensor([3, 3, 3, 2]), prior, limit=0.75)
    assert keep.tolist() == [False, True, True, True]
    masks[0, 8:24, 16:22] = True  # now half of it lies on class 3: below the limit, kept
    assert prompts_on_prior(masks[:1], torch.zeros(1, dtype=torch.long), torch.tensor([3]), prior, 0.75).item()


class LeftHalfSam(nn.Module):
    """Stands in for SAM: every box returns the left half of itself, as LiteMedSAM returned the RV from a box
    around both cavities."""

    def decode(self, emb, image_index, boxes, points=None, point_labels=None, frame_size=S, out_size=None):
        h, w = out_size or (frame_size, frame_size)
        xx = torch.arange(w).view(1, 1, w).expand(len(boxes), h, w)
        yy = torch.arange(h).view(1, h, 1).expand(len(boxes), h, w)
        x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
        inside = (xx >= x0) & (xx <= (x0 + x1) // 2) & (yy >= y0) & (yy <= y1)
        return inside.float() * 20 - 10, torch.ones(len(boxes))


@pytest.mark.parametrize("points", [0, 1])
def test_a_swapped_box_is_replaced_by_its_class_box_on_the_prior(points):
    prior = two_cavities()
    config = preset("quick", size=S, device="cpu", bbox_shift=0, points=points)
    refiner = Refiner(LeftHalfSam(), config, torch.device("cpu"))
    refiner.trusted = None
    swallowed = prior.clone()
    swallowed[prior > 0] = 3  # the Match model's class 3 covers both cavities
    probs = torch.nn.functional.one_hot(swallowed, 4).permute(0, 3, 1, 2).float()
    emb = torch.zeros(1, 1, 1, 1)
    unchecked = refiner.refine(probs, [0], torch.zeros(1, 1, S, S), emb=emb)
    assert (unchecked.labels[0][prior[0] == 1] == 3).all()  # class 3 lands on class 1's cavity
    checked = refiner.refine(probs, [0], torch.zeros(1, 1, S, S), emb=emb,
                             prior_check=PriorCheck(prior, prior, 0.75))
    assert checked.prompts.class_index.tolist() == [3] and (checked.prompts.points is None) == (points == 0)
    assert checked.prompts.boxes[0].tolist() == [16, 8, 27, 23]  # the prior's class-3 box
    lab = checked.labels[0]
    assert (lab[prior[0] == 1] != 3).all() and (lab[8:24, 16:22] == 3).all()


def test_prompts_join_only_within_one_batch():
    lab = two_cavities()
    a = prompts_from_labels(lab, 4)
    both = a + prompts_from_labels(lab, 4)
    assert len(both) == 2 * len(a) and both.class_index.tolist() == a.class_index.tolist() * 2
    other = Prompts.from_numpy_dict({**a.to_numpy_dict(), "num_images": 2})
    with pytest.raises(DataError):
        a + other
