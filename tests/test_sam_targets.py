"""SAM's training targets: with ``sam_fill_targets`` a ring (the myocardium) is taught as the disk it bounds.

SAM is class-agnostic, so a box around the ring and a box around the LV inside it must mean the same
thing, "the object filling this box"; the nested fusion then cuts the LV out of the disk again.
"""

from __future__ import annotations

import torch

from napari_samatch.core.config import RunConfig
from napari_samatch.core.sam.prompts import prompts_from_labels
from napari_samatch.core.sam.refiner import Refiner, fill_holes

S = 32


def _disk(r: float, cy: int = 16, cx: int = 16) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _ring_with_lv() -> torch.Tensor:
    lab = torch.zeros(S, S, dtype=torch.long)
    lab[_disk(10)] = 2          # myocardium ...
    lab[_disk(6)] = 3           # ... around the LV
    lab[2:6, 2:8] = 1           # and an RV elsewhere
    return lab


def test_fill_holes_fills_each_mask_on_its_own_plane():
    ring = _disk(10) & ~_disk(6)
    open_ring = ring.clone()
    open_ring[16, 20:] = False  # a cut through the ring: its inside reaches the border, nothing to fill
    open_ring[15:18, 24:28] = False
    masks = torch.stack([ring, open_ring, _disk(6), torch.zeros(S, S, dtype=torch.bool)])
    out = fill_holes(masks)
    assert out.dtype == torch.bool and out.shape == masks.shape
    assert torch.equal(out[0], _disk(10))                   # the ring becomes its disk
    assert torch.equal(out[1], open_ring)                   # an open ring stays as it is
    assert torch.equal(out[2], _disk(6))                    # a disk is already filled
    assert not out[3].any()
    assert fill_holes(torch.zeros(0, S, S, dtype=torch.bool)).shape == (0, S, S)


def _refiner(fill: bool) -> Refiner:
    config = RunConfig(size=S, num_classes=4, class_names=["background", "RV", "Myo", "LV"], bbox_shift=0,
                       device="cpu", sam_fill_targets=fill)
    return Refiner(sam=None, config=config, device=torch.device("cpu"))


def test_targets_teach_the_ring_as_its_disk_only_when_asked():
    labels = _ring_with_lv()[None]
    prompts = prompts_from_labels(labels, 4, bbox_shift=0)
    by_class = {int(c): i for i, c in enumerate(prompts.class_index.tolist())}
    plain, filled = _refiner(False).targets(labels, prompts), _refiner(True).targets(labels, prompts)
    assert torch.equal(plain[by_class[2]].bool(), labels[0] == 2)           # the ring as painted
    assert torch.equal(filled[by_class[2]].bool(), _disk(10))               # the ring's disk
    for k in (1, 3):                                                         # solid classes: unchanged
        assert torch.equal(filled[by_class[k]], plain[by_class[k]])
