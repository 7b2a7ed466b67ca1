"""Which classes SAM may refine: ``Refiner.calibrate`` on labeled slices, and what refinement does with it.

SAM's decoder is replaced by a stand-in that returns the exact mask of class 1 and garbage for class 2,
so the rule is checked without any model: class 2 loses its prompts and keeps the Match model's label.
"""

from __future__ import annotations

import pytest
import torch

from napari_samatch.core.config import RunConfig
from napari_samatch.core.errors import ConfigError
from napari_samatch.core.sam.refiner import Refiner

S = 32


def _labels() -> torch.Tensor:
    lab = torch.zeros(2, S, S, dtype=torch.long)
    lab[:, 4:12, 4:12] = 1
    lab[:, 18:28, 16:30] = 2
    return lab


class _Decoder:
    """Class 1: the true mask inside its box. Class 2: the box's top-left quarter only."""

    def __call__(self, emb, prompts):
        out = torch.full((len(prompts), S, S), -10.0)
        for p, (c, box) in enumerate(zip(prompts.class_index.tolist(), prompts.boxes.long().tolist())):
            x0, y0, x1, y1 = box
            if c == 1:
                out[p, 4:12, 4:12] = 10.0
            else:
                out[p, y0:(y0 + y1) // 2, x0:(x0 + x1) // 2] = 10.0
        return out, torch.ones(len(prompts))


def _refiner(trust: float) -> Refiner:
    config = RunConfig(size=S, num_classes=3, class_names=["background", "good", "bad"], sam_trust_dice=trust,
                       bbox_shift=0, device="cpu")
    ref = Refiner(sam=None, config=config, device=torch.device("cpu"))
    ref.embeddings = lambda keys, images: torch.zeros(len(keys), 1)
    ref.decode = _Decoder()
    return ref


def test_calibrate_trusts_only_classes_sam_gets_right_from_true_boxes():
    ref = _refiner(0.8)
    dice = ref.calibrate([0, 1], torch.zeros(2, 1, S, S), _labels())
    assert dice[1] == pytest.approx(1.0) and dice[2] < 0.5
    assert ref.trusted == {1}


def test_an_untrusted_class_gets_no_prompt_and_keeps_the_match_label():
    ref = _refiner(0.8)
    labels = _labels()
    ref.calibrate([0, 1], torch.zeros(2, 1, S, S), labels)
    probs = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 0.9 + 0.05
    refined = ref.refine(probs, [0, 1], torch.zeros(2, 1, S, S))
    assert set(refined.prompts.class_index.tolist()) == {1}
    assert torch.equal(refined.labels, labels)  # class 1 from SAM (exact), class 2 from the Match model


def test_trust_zero_refines_every_class_and_bad_values_are_refused():
    ref = _refiner(0.0)
    ref.calibrate([0, 1], torch.zeros(2, 1, S, S), _labels())
    assert ref.trusted == {1, 2}
    with pytest.raises(ConfigError, match="sam_trust_dice"):
        RunConfig(sam_trust_dice=1.5)


def _ring_labels() -> torch.Tensor:
    """Class 1 a square; class 2 a ring (the myocardium) around class 3 (the LV), as on ACDC and the phantom."""
    lab = torch.zeros(2, S, S, dtype=torch.long)
    lab[:, 2:8, 2:8] = 1
    lab[:, 12:30, 12:30] = 2
    lab[:, 16:26, 16:26] = 3
    return lab


class _PerfectDecoder:
    """A SAM that outlines every box's class exactly (even the ring): trust is denied by shape, not by Dice."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def __call__(self, emb, prompts):
        out = torch.full((len(prompts), S, S), -10.0)
        for p, (i, c) in enumerate(zip(prompts.image_index.tolist(), prompts.class_index.tolist())):
            out[p][self.labels[i] == c] = 10.0
        return out, torch.ones(len(prompts))


def test_ring_classes_finds_the_ring_and_not_a_c_shape():
    from napari_samatch.core.sam.refiner import ring_classes

    lab = _ring_labels()
    assert ring_classes(lab, 4) == {2}
    open_ring = lab.clone()
    open_ring[:, 12:16, 19:23] = 3  # a gap in the ring on both slices: the LV is no longer enclosed
    assert ring_classes(open_ring, 4) == set()
    one_closed = torch.stack([lab[0], open_ring[1]])  # closed on half of its slices: still a ring
    assert ring_classes(one_closed, 4) == {2}


def test_a_ring_keeps_the_match_label_even_when_sam_outlines_it_from_exact_boxes():
    lab = _ring_labels()
    config = RunConfig(size=S, num_classes=4, class_names=["background", "RV", "Myo", "LV"], sam_trust_dice=0.8,
                       bbox_shift=0, device="cpu")
    ref = Refiner(sam=None, config=config, device=torch.device("cpu"))
    ref.embeddings = lambda keys, images: torch.zeros(len(keys), 1)
    ref.decode = _PerfectDecoder(lab)
    dice = ref.calibrate([0, 1], torch.zeros(2, 1, S, S), lab)
    assert min(dice.values()) == pytest.approx(1.0)
    assert ref.trusted == {1, 3} and ref.rings == {2}
    ref.config = config.replace(sam_trust_dice=0.0)  # 0 = SAM refines every class, rings included
    ref.calibrate([0, 1], torch.zeros(2, 1, S, S), lab)
    assert ref.trusted == {1, 2, 3}
