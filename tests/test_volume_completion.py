"""Real volumes, three painted slices: the default Start must beat interpolation between them.

A short version of benchmarks/volume_completion.py (docs/benchmarks.md has the full table): two ACDC
validation volumes, k = 3 painted slices (the centres of three equal runs of the slices that hold the
heart), the `quick` preset as Start runs it, the real LiteMedSAM. Scored on the unpainted slices
as the pseudo-labels the Review dock shows and Export writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ACDC = REPO.parent / "shared" / "data" / "ACDC"
sys.path.insert(0, str(REPO / "benchmarks"))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (ACDC / "val.list").is_file(), reason=f"ACDC not found at {ACDC}")]

# two patients, one ED and one ES frame; measured in docs/testing.md and docs/benchmarks.md
VOLUMES = ("patient028_frame01", "patient085_frame02")
SHORT = {"threads": 2}  # the quick preset as the docks run it


def load(vid: str) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(ACDC / "data" / f"{vid}.h5") as f:
        return f["image"][:].astype(np.float32), f["label"][:].astype(np.uint8)


def test_start_beats_interpolation_between_three_painted_slices():
    import volume_completion as vc
    from napari_samatch.core.prior.interpolation import interpolate_labels

    gains, rows = [], []
    for vid in VOLUMES:
        image, labels = load(vid)
        picks = vc.painted_slices(labels, 3)
        rest = [z for z in range(len(labels)) if z not in picks]
        painted = np.zeros_like(labels)
        painted[picks] = labels[picks]
        interp = vc.mean_dice(vc.scores(interpolate_labels(painted, picks, 4).labels, labels, rest))
        engine = vc.engine_for(image, painted, picks, seed=0, **SHORT)
        first = engine.prior_preview(range(len(labels)))  # what the user sees at once
        assert np.array_equal(first["raw"][picks[0]] > 0, engine.labels[picks[0]].cpu().numpy() > 0)
        engine.run()
        out = engine.preview(list(range(len(labels))))
        start = vc.mean_dice(vc.scores(vc.to_shape(out["refined"], labels.shape[1:]), labels, rest))
        rows.append((vid, round(interp, 3), round(start, 3)))
        gains.append(start - interp)
    print("interp vs start:", rows)
    assert np.mean(gains) >= 0.05, rows
    assert min(gains) >= 0.0, rows
