"""The one way into a run (``core/engine/rounds.py``): a volume in memory is a cohort of one, a new round reuses
the engine, and validation slices are held out across a cohort. Headless, on the synthetic phantom written to
NIfTI (small: a few seconds)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_samatch.core.config import preset
from napari_samatch.core.data.cohort import list_cohort
from napari_samatch.core.data.holdout import held_out
from napari_samatch.core.data.io import read_volume
from napari_samatch.core.data.sample import make_cardiac_phantom
from napari_samatch.core.data.slices import SliceSet
from napari_samatch.core.engine.export import export_model
from napari_samatch.core.engine.rounds import review_engine, start_round, training_data
from napari_samatch.core.errors import DataError

NAMES = ["background", "RV", "Myo", "LV"]
PAINTED = {"heart0": [2, 5, 8], "heart1": [3, 9]}


def _config(**kw):
    base = dict(method="supervised", warmup_iters=0, sam_iters=0, joint_iters=2, size=32, batch_labeled=2,
                batch_unlabeled=2, device="cpu", threads=1, eval_every=1, checkpoint_every=0)
    return preset("quick", **{**base, **kw})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Two phantom hearts as NIfTI files (no label files) and the painting of each, as the Cohort dock holds it."""
    root = tmp_path_factory.mktemp("cohort")
    paintings = {}
    for seed, name in enumerate(PAINTED):
        ph = make_cardiac_phantom((12, 48, 40), seed=seed)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(ph.image.astype(np.float32).T), np.eye(4)),
                 str(root / f"{name}.nii.gz"))
        paint = np.zeros_like(ph.labels)
        paint[PAINTED[name]] = ph.labels[PAINTED[name]]
        paintings[name] = paint
    return root, paintings


def _volume(root: Path, paintings: dict[str, np.ndarray], name: str):
    """The member as the napari reader shows it, its painting as the labels layer."""
    vol = read_volume(root / f"{name}.nii.gz")
    vol.labels, vol.name = paintings[name].copy(), name
    return vol


def _slices(data: SliceSet, group: str) -> dict[str, list]:
    ix = [i for i, g in enumerate(data.groups) if g == group]
    return {key: [getattr(data, key)[i] for i in ix] for key in ("images", "labels", "hidden", "ids", "positions")}


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all((x is None and y is None) or (x is not None and y is not None and x.dtype == y.dtype
                                                                   and np.array_equal(x, y)) for x, y in zip(a, b))


def test_one_volume_and_a_cohort_of_two_give_the_same_slices(cohort):
    root, paintings = cohort
    one = training_data([_volume(root, paintings, "heart0")], 0, NAMES)
    two = training_data(list_cohort(root), 0, NAMES, paintings=paintings)
    assert two.is_lazy and not one.is_lazy  # the cohort's files are read on demand; the same slices all the same
    a, b = _slices(one, "heart0"), _slices(two, "heart0")
    assert a["ids"] == b["ids"] and a["positions"] == b["positions"] == list(range(12))
    for key in ("images", "labels", "hidden"):
        assert _same(a[key], b[key]), key
    assert one.labeled_indices() == PAINTED["heart0"]
    assert [two.ids[i] for i in two.labeled_indices()] == [f"{n}_slice_{z}" for n, zs in PAINTED.items() for z in zs]
    assert one.class_names == two.class_names == NAMES and one.num_classes == two.num_classes == 4


def test_a_volume_holds_out_as_the_train_dock_always_did(cohort):
    """The held-out slice stays in place, unlabeled, its label hidden; the validation set is that slice."""
    root, paintings = cohort
    vol = _volume(root, paintings, "heart0")
    engine = start_round([vol], 0, NAMES, _config(), val_slices=1)
    held = held_out(PAINTED["heart0"], 1)
    assert held == [5]
    reference = SliceSet.from_volume(vol, labeled=[2, 8], num_classes=4, class_names=NAMES)
    data = engine.data
    assert _same(list(data.images), reference.images) and _same(list(data.labels), reference.labels)
    assert [i for i, h in enumerate(data.hidden) if h is not None] == held
    assert np.array_equal(data.hidden[5], vol.labels[5])
    assert engine.validator.val.ids == ["heart0_slice_5"] and np.array_equal(engine.validator.val.labels[0],
                                                                             vol.labels[5])


def test_validation_is_held_out_across_the_cohort(cohort):
    root, paintings = cohort
    engine = start_round(list_cohort(root), 0, NAMES, _config(), paintings=paintings, val_slices=2)
    val = engine.validator.val
    assert sorted(set(val.groups)) == ["heart0", "heart1"]  # spread over the volumes, not all from the first
    data = engine.data
    assert len(data) == 24 and set(val.ids) == {data.ids[i] for i in data.hidden_indices()}
    assert not set(val.ids) & {data.ids[i] for i in data.labeled_indices()}  # never trained on
    assert len(data.labeled_indices()) == 5 - 2
    engine.run()
    assert "val_mean_dice" in engine.history[-1]


def test_the_next_round_reuses_the_engine_and_its_models(cohort):
    root, paintings = cohort
    members = list_cohort(root)
    engine = start_round(members, 0, NAMES, _config(), paintings=paintings)
    engine.run()
    unet, weights = engine.unet, {k: v.clone() for k, v in engine.unet.state_dict().items()}
    more = dict(paintings, heart1=paintings["heart1"].copy())
    more["heart1"][6] = make_cardiac_phantom((12, 48, 40), seed=1).labels[6]  # one more painted slice
    again = start_round(members, 0, NAMES, _config(joint_iters=3), paintings=more, val_slices=1, engine=engine)
    assert again is engine and engine.unet is unet
    assert all(torch.equal(weights[k], v) for k, v in engine.unet.state_dict().items())  # not re-initialised
    assert engine.config.joint_iters == 3 and engine.validator is not None
    assert len(engine.data.labeled_indices()) == 6 - 1  # the new slice joins; one is held out


def test_a_saved_model_is_loaded_for_review_on_the_volume(cohort, tmp_path):
    root, paintings = cohort
    vol = _volume(root, paintings, "heart0")
    engine = start_round([vol], 0, NAMES, _config())
    engine.run()
    path = export_model(engine, tmp_path / "model.pt")
    loaded = review_engine(path, [vol], 0, NAMES, device="cpu")
    assert loaded.validator is None and loaded.data.labeled_indices() == PAINTED["heart0"]
    best = engine.best_state or engine.unet.state_dict()
    assert all(torch.equal(best[k], v) for k, v in loaded.unet.state_dict().items())


def test_volumes_and_files_are_not_mixed(cohort):
    root, paintings = cohort
    with pytest.raises(DataError, match="not both"):
        training_data([_volume(root, paintings, "heart0"), *list_cohort(root)], 0, NAMES)


def test_complete_label_files_label_every_slice_of_their_volume(cohort, tmp_path):
    """``labels_complete`` reaches ``cohort_slices``: heart0's label file (three painted slices) labels all 12
    slices; heart1's painting still counts its painted slices only."""
    root, paintings = cohort
    labels = tmp_path / "labels"
    labels.mkdir()
    nib.save(nib.Nifti1Image(np.ascontiguousarray(paintings["heart0"].T), np.eye(4)), str(labels / "heart0.nii.gz"))
    members = list_cohort(root, labels)
    engine = start_round(members, 0, NAMES, _config(), paintings={"heart1": paintings["heart1"]}, val_slices=2,
                         labels_complete=True)
    assert len(engine.data.labeled_indices()) == 12 + 2 - 2 and len(engine.validator.val) == 2
    plain = start_round(members, 0, NAMES, _config(), paintings={"heart1": paintings["heart1"]})
    assert len(plain.data.labeled_indices()) == 3 + 2
