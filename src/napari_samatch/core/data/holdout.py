"""Labeled slices held out for validation: which ones, and the split of a slice set.

One rule for a single volume and a cohort: ``val_slices`` of the labeled slices, evenly spread over them in
their order (a cohort's slices go volume by volume, so the held-out ones spread over the labeled volumes),
never all of them: training needs at least one. A held-out slice keeps its place in the training set as an
unlabeled slice whose label is hidden: slice ``i`` stays slice ``i`` of the volume (the docks' previews and
review index the shown volume), the Match model never trains on its label, and the engine scores its
pseudo-label against it.
"""

from __future__ import annotations

from typing import Any, Sequence

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
    """The training set with the held-out slices unlabeled (labels hidden), and the held-out ones as the
    validation set (None: 0 asked or a single labeled slice). Works on lazy sets: references move, nothing
    is read."""
    held = held_out(data.labeled_indices(), val_slices)
    if not held:
        return data, None
    val = data.subset(held)
    labels, hidden = _copy(data.labels), _copy(data.hidden)
    for i in held:
        # a lazy hidden sequence takes the label's reference (or painted array) as it is: nothing is read
        _put(hidden, i, data.labels.refs[i] if _lazy(data.labels) and _lazy(hidden) else data.labels[i])
        _put(labels, i, None)
    train = SliceSet(data.images, labels, hidden, list(data.ids), list(data.groups), list(data.positions),
                     data.num_classes, list(data.class_names))
    return train, val


def _lazy(seq: Sequence[Any]) -> bool:
    return bool(getattr(seq, "lazy", False))


def _copy(seq: Sequence[Any]) -> Any:
    """An editable copy: a lazy sequence stays lazy (its references copied), a list is copied."""
    return seq.take(range(len(seq))) if _lazy(seq) else list(seq)  # type: ignore[attr-defined]


def _put(seq: Any, i: int, value: Any) -> None:
    if _lazy(seq):
        seq.refs[i] = value
    else:
        seq[i] = value
