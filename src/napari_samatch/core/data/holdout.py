"""Labeled slices held out for validation: which ones, and the split of a slice set.

One rule for a single volume and a cohort: ``val_slices`` of the labeled slices, evenly spread over them in
their order (a cohort's slices go volume by volume, so the held-out ones spread over the labeled volumes),
never all of them: training needs at least one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .slices import SliceSet


def held_out(labeled: Sequence[int], val_slices: int) -> list[int]:
    """``val_slices`` of the ``labeled`` indices, evenly spread between the ends, never all of them."""
    k = min(val_slices, len(labeled) - 1)
    if k <= 0:
        return []
    picks = np.linspace(0, len(labeled) - 1, k + 2)[1:-1].round().astype(int)
    return sorted({labeled[i] for i in picks})


def split_validation(data: SliceSet, val_slices: int) -> tuple[SliceSet, SliceSet | None]:
    """Training slices without the held-out ones, and the held-out ones as the validation set (None: 0 asked
    or a single labeled slice). Works on lazy sets: only indices move, nothing is read."""
    held = held_out(data.labeled_indices(), val_slices)
    if not held:
        return data, None
    gone = set(held)
    return data.subset([i for i in range(len(data)) if i not in gone]), data.subset(held)
