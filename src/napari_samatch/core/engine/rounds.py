"""One way into a run: the training members -> their slices -> the held-out split -> a new engine or the next round.

A member is a volume in memory (the napari layers' snapshot: its labels are the painting) or a file member of a
cohort (``data/cohort.py``; a painting held in memory replaces its label file). The Train dock's single volume
is a cohort of one: the docks, the sessions and the command line build their training data here, with one
held-out rule (``data/holdout.py``), so a volume trains the same whichever dock or command started it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

from ..checkpoint import load_checkpoint
from ..config import RunConfig, from_dict
from ..data.cohort import Member, cohort_slices
from ..data.holdout import split_validation
from ..data.slices import SliceSet, default_class_names
from ..data.volume import Volume
from ..errors import CheckpointError, DataError
from .engine import Engine

TrainingMember = Union[Volume, Member]


def training_data(members: Sequence[TrainingMember], axis: int = 0, class_names: Sequence[str] | None = None,
                  paintings: Mapping[str, np.ndarray] | None = None, labels_complete: bool = False) -> SliceSet:
    """Every slice of every member in order; painted slices are labeled, the rest unlabeled.

    ``class_names`` (background first) is extended with default names up to the largest class painted;
    ``paintings`` (member name -> label volume) apply to file members. Volumes in memory and files are not
    mixed in one call (a cohort's files may be read lazily; a volume in memory never is).
    ``labels_complete``: every slice of a file member with a label file is labeled (``cohort_slices``).
    """
    volumes = [m for m in members if isinstance(m, Volume)]
    files = [m for m in members if not isinstance(m, Volume)]
    if not members:
        raise DataError("There is nothing to train on; open an image (or a folder of volumes) first.")
    if volumes and files:
        raise DataError("Train either on volumes open in napari or on a cohort's files, not both at once.")
    if files:
        return cohort_slices(files, axis, list(class_names or []) or None, paintings=paintings,
                             labels_complete=labels_complete)
    return _volume_slices(volumes, axis, class_names)


def _volume_slices(volumes: Sequence[Volume], axis: int, class_names: Sequence[str] | None) -> SliceSet:
    names = list(class_names or volumes[0].metadata.get("class_names") or [])
    for vol in volumes:
        if vol.labels is None:
            raise DataError(f"'{vol.name}' has no labels layer. Paint at least one slice, then start again.")
        vol.validate()  # before the largest class is read: NaN or negative labels get their sentence
    if len({v.name for v in volumes}) < len(volumes):
        raise DataError("Two volumes have the same name, so their slices would be scored as one; rename one.")
    # every class value in the labels counts, painted or not (as the Data dock's class list shows them)
    top = max(int(np.max(v.labels)) if np.size(v.labels) else 0 for v in volumes)
    n = max(len(names), top + 1, 2)
    names = (names + default_class_names(n)[len(names):])[:n]
    sets = [SliceSet.from_volume(v, axis=axis, num_classes=n, class_names=names) for v in volumes]
    if len(sets) == 1:
        return sets[0]
    return SliceSet([im for s in sets for im in s.images], [lab for s in sets for lab in s.labels],
                    [h for s in sets for h in s.hidden], [i for s in sets for i in s.ids],
                    [g for s in sets for g in s.groups], [p for s in sets for p in s.positions], n, names)


def start_round(members: Sequence[TrainingMember], axis: int, class_names: Sequence[str] | None,
                config: RunConfig, paintings: Mapping[str, np.ndarray] | None = None, val_slices: int = 0,
                engine: Engine | None = None, labels_complete: bool = False) -> Engine:
    """A new engine on the members' slices, or ``engine``'s next round on them (its models kept, the stage
    lengths and method of ``config``); ``val_slices`` labeled slices, spread over all members, are held out
    for validation; ``labels_complete`` as in ``training_data``. Reads label files: call it where waiting is
    fine (the docks' worker thread)."""
    data, val = split_validation(training_data(members, axis, class_names, paintings, labels_complete), val_slices)
    config = config.replace(num_classes=data.num_classes, class_names=list(data.class_names))
    if engine is None:
        return Engine(data, config, val=val)
    engine.next_round(data, config, val)
    return engine


def review_engine(path: str | Path, members: Sequence[TrainingMember], axis: int,
                  class_names: Sequence[str] | None, paintings: Mapping[str, np.ndarray] | None = None,
                  device: str = "auto", labels_complete: bool = False) -> Engine:
    """The engine of a saved model (a training checkpoint or an exported model) on the members' slices, to
    review and continue from: nothing is held out until the next round asks for it."""
    return engine_from_file(path, training_data(members, axis, class_names, paintings, labels_complete), device)


def engine_from_file(path: str | Path, data: SliceSet, device: str = "auto") -> Engine:
    """An engine from a training checkpoint (resumable) or an exported model (weights only) on ``data``."""
    payload = load_checkpoint(path)
    if "opt_unet" in payload:
        return Engine.from_checkpoint(path, data, device=device)
    engine = Engine(data, from_dict({**payload["config"], "device": device}))
    try:
        engine.unet.load_state_dict(payload.get("unet_best") or payload["unet"])
        if "sam" in payload:
            engine.sam.load_state_dict(payload["sam"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"The model in {path} does not fit these classes ({str(exc)[:160]}). "
                              "Choose a model trained with the same class list.") from exc
    engine.history, engine.best = list(payload.get("history", [])), dict(payload.get("best", engine.best))
    return engine
