"""Validation slices held out of training: one rule for a volume and a cohort (``core/data/holdout.py``), the
command line's ``--val-slices`` and the docks' (through ``core/engine/rounds.start_round``, headless here)."""

from __future__ import annotations

import json
import shutil
import warnings

from napari_samatch.cli import main
from napari_samatch.core.data.cohort import cohort_slices, list_cohort
from napari_samatch.core.data.holdout import held_out, split_validation
from napari_samatch.core.errors import DataWarning
from test_cohort import TRAIN, cli_error, nifti_cohort  # noqa: F401 - nifti_cohort is a fixture

QUICK = [*TRAIN[:TRAIN.index("--eval-every")], "--eval-every", "1", *TRAIN[TRAIN.index("--eval-every") + 2:]]


def test_held_out_is_evenly_spread_and_never_all():
    assert held_out(list(range(10)), 2) == [3, 6]
    assert held_out([5, 7], 3) == [5]  # one of two: the other trains
    assert held_out([5], 1) == [] and held_out(list(range(10)), 0) == []


def _cohort(images, labels):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the fixture's orphan label file
        return cohort_slices(list_cohort(images, labels))


def test_a_cohort_split_moves_references_only(nifti_cohort):  # noqa: F811
    data = _cohort(*nifti_cohort)  # labeled: p1 slices 1 and 4, p2 slice 2
    train, val = split_validation(data, 1)
    assert train.is_lazy and val.is_lazy and getattr(train.labels, "lazy", False)  # nothing read
    assert val.ids == ["p1_slice_4"] and val.labeled_indices() == [0]
    # the held-out slice keeps its place, unlabeled, its label hidden (scored as a pseudo-label, never trained on)
    assert train.ids == data.ids and train.ids[4] == "p1_slice_4"
    assert [train.ids[i] for i in train.labeled_indices()] == ["p1_slice_1", "p2_slice_2"]
    assert train.hidden_indices() == [4] and train.hidden.refs[4] is data.labels.refs[4]
    assert [data.ids[i] for i in data.labeled_indices()] == ["p1_slice_1", "p1_slice_4", "p2_slice_2"]  # untouched
    assert split_validation(data, 0) == (data, None)


def test_the_cohort_dock_engine_validates_on_held_out_slices(nifti_cohort):  # noqa: F811
    from napari_samatch.core.config import preset
    from napari_samatch.core.data.cohort_state import CohortState

    images, labels = nifti_cohort
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        cohort = CohortState.open(images, labels)
    config = preset("quick", method="supervised", warmup_iters=0, sam_iters=0, joint_iters=2, size=32,
                    device="cpu", threads=1, eval_every=1)
    from napari_samatch.core.engine.rounds import start_round

    engine = start_round(cohort.members, cohort.axis, [], config, val_slices=1)
    assert engine.validator is not None and engine.validator.val.ids == ["p1_slice_4"]
    engine.run()
    assert engine.history and "val_mean_dice" in engine.history[-1]
    assert start_round(cohort.members, cohort.axis, [], config, engine=engine).validator is None  # 0: none next


def test_cli_val_slices_validates_and_keeps_the_best(nifti_cohort, tmp_path, capsys):  # noqa: F811
    images, labels = nifti_cohort
    run = tmp_path / "run"
    assert main(["train", "--images", str(images), "--labels", str(labels), "--val-slices", "1", "--out", str(run),
                 *QUICK]) == 0
    assert "2 labeled and 16 unlabeled slices" in capsys.readouterr().err  # the held-out one among them
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert history and all("val_mean_dice" in h for h in history)


def test_cli_val_slices_mistakes_get_one_sentence(nifti_cohort, tmp_path, capsys):  # noqa: F811
    images, labels = nifti_cohort
    out = ["--out", tmp_path / "run"]
    assert "--val-slices applies only with --image or --images" in cli_error(
        ["train", "--ssl4mis", tmp_path, "--val-slices", "2", *out, *TRAIN], capsys)
    assert "--val-slices -1 is negative" in cli_error(
        ["train", "--images", images, "--labels", labels, "--val-slices", "-1", *out, *TRAIN], capsys)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(labels / "p2_label.nii.gz", one)
    argv = ["train", "--images", images, "--labels", one, "--val-slices", "1", *out, *TRAIN]
    assert main([str(a) for a in argv]) == 2  # after the line that counts the volumes: the one sentence
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("napari-samatch: --val-slices 1 needs at least two labeled slices"), last
    assert not (tmp_path / "run").exists()
