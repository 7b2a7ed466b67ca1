"""Bad input to the run itself: labels the engine cannot train on, checkpoints and model files that do not fit
(or were tampered with), SAM weights that are not LiteMedSAM's, run settings (``ConfigError``) and saving
under a regular file.

One table, same machinery as ``test_bad_input.py`` (``bad_input_helpers.check_row``: the project's own error,
key words, the folder byte-identical after the refused action).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bad_input_helpers import Table, check_row
from bad_input_helpers import config as _config
from bad_input_helpers import img as _img
from bad_input_helpers import labels as _labels
from bad_input_helpers import model_file as _model_file
from bad_input_helpers import slice_set as _slice_set
from bad_input_helpers import volume_files as _volume_files
from napari_samatch.core.checkpoint import load_checkpoint, save_checkpoint
from napari_samatch.core.config import from_dict, load_config
from napari_samatch.core.data import datasets
from napari_samatch.core.data.slices import SliceSet
from napari_samatch.core.engine.export import load_model
from napari_samatch.core.errors import CheckpointError, ConfigError, DataError, StorageError
from napari_samatch.core.match.unet import UNet

_table = Table()
CASES, case = _table.rows, _table.case


# ------------------------------------------------------------------------------ engine, slices, config
@case("engine-labels-beyond-class-count", DataError, "class 5", "2 classes", "repaint")
def _(tmp):
    img, lab = _volume_files(tmp, _labels(value=5))
    return lambda: datasets.volume_with_labels(img, lab, class_names=["background", "lesion"])


@case("engine-no-labeled-slice", DataError, "No slice is labeled", "Paint at least one slice")
def _(tmp):
    img, lab = _volume_files(tmp, np.zeros((4, 32, 32), np.uint8))
    return lambda: datasets.volume_with_labels(img, lab)


@case("engine-single-labeled-class", DataError, "only class 1", "no background", "two classes")
def _(tmp):
    lab = np.zeros((4, 32, 32), np.uint8)
    lab[1] = 1  # a whole slice filled with one class: nothing to tell it from
    img, lab_path = _volume_files(tmp, lab)
    return lambda: datasets.volume_with_labels(img, lab_path)


@case("engine-checkpoint-wrong-architecture", CheckpointError, "does not fit", "other classes")
def _(tmp):
    from napari_samatch.core.engine.engine import Engine

    cfg = _config(4)
    unet = UNet(1, 4)
    opt = torch.optim.SGD(unet.parameters(), lr=0.01, momentum=0.9)
    save_checkpoint(tmp / "last.pt", {"config": cfg.to_dict(), "unet": unet.state_dict(), "opt_unet": opt.state_dict(),
                                      "stage_index": 0, "stage_iter": 1})
    data = _slice_set(2)
    return lambda: Engine.from_checkpoint(tmp / "last.pt", data)


@case("engine-checkpoint-is-a-sam-state-dict", CheckpointError, "not a napari-samatch checkpoint", "SAM backend")
def _(tmp):
    from napari_samatch.core.engine.engine import Engine

    torch.save({"image_encoder.x": torch.zeros(2), "mask_decoder.y": torch.zeros(2)}, tmp / "sam.pth")
    data = _slice_set(2)
    return lambda: Engine.from_checkpoint(tmp / "sam.pth", data)


@case("engine-checkpoint-hash-mismatch", CheckpointError, "recorded hash", "earlier checkpoint")
def _(tmp):
    save_checkpoint(tmp / "last.pt", {"x": torch.zeros(1000)})
    raw = bytearray((tmp / "last.pt").read_bytes())
    raw[-100] ^= 0xFF  # one flipped byte
    (tmp / "last.pt").write_bytes(bytes(raw))
    return lambda: load_checkpoint(tmp / "last.pt")


@case("sam-non-litemedsam-state-dict", CheckpointError, "does not fit the LiteMedSAM", "backend")
def _(tmp):
    from napari_samatch.core.sam import load_litemedsam

    torch.save(UNet(1, 2).state_dict(), tmp / "unet.pth")
    return lambda: load_litemedsam(tmp / "unet.pth")


@case("sam-checkpoint-without-state-dict", CheckpointError, "no state_dict", "torch.save(model.state_dict()")
def _(tmp):
    from napari_samatch.core.sam import load_litemedsam

    torch.save([torch.zeros(3)], tmp / "list.pth")
    return lambda: load_litemedsam(tmp / "list.pth")


@case("exported-model-wrong-architecture", CheckpointError, "does not fit", "model.pt")
def _(tmp):
    p = _model_file(tmp, config_classes=2, unet_classes=4)
    return lambda: load_model(p)


@case("config-unknown-key", ConfigError, "Unknown setting", "learning_rate", "Known settings")
def _(tmp):
    return lambda: from_dict({"learning_rate": 0.1})


@case("config-size-out-of-range", ConfigError, "'size' = 33", "multiple of 16")
def _(tmp):
    return lambda: from_dict({"size": 33})


@case("config-one-class", ConfigError, "num_classes", "2..64")
def _(tmp):
    return lambda: from_dict({"num_classes": 1, "class_names": ["background"]})


@case("config-file-bad-syntax", ConfigError, "could not be parsed", "Fix its syntax")
def _(tmp):
    (tmp / "run.toml").write_text("size = [1,\n")
    return lambda: load_config(tmp / "run.toml")


@case("config-file-missing", ConfigError, "does not exist", ".json or .toml")
def _(tmp):
    return lambda: load_config(tmp / "nope.json")


@case("config-wrong-type-names-the-key", ConfigError, "'lr'")
def _(tmp):
    return lambda: from_dict({"lr": "fast"})


@case("config-unknown-optimizer", ConfigError, "'optimizer' = 'adam'", "sgd or adamw")
def _(tmp):
    return lambda: from_dict({"optimizer": "adam"})


@case("config-class-names-not-a-list", ConfigError, "class_names")
def _(tmp):
    return lambda: from_dict({"num_classes": 2, "class_names": "ab"})


@case("engine-raw-sliceset-label-beyond-classes", DataError, "class 5")
def _(tmp):
    from napari_samatch.core.engine.engine import Engine

    lab = np.zeros((32, 32), np.uint8)
    lab[4:9, 4:9] = 5
    data = SliceSet([_img((32, 32)), _img((32, 32), 1)], [lab, None], [None, None], ["a", "b"], ["g", "g"],
                    [0, 1], 2)
    return lambda: Engine(data, _config(2)).run()


@case("engine-raw-sliceset-label-shape-mismatch", DataError, "shape")
def _(tmp):
    from napari_samatch.core.engine.engine import Engine

    data = SliceSet([_img((32, 32))], [_labels((1, 5, 5), slices=(0,))[0] | 1], [None], ["a"], ["g"], [0], 2)
    return lambda: Engine(data, _config(2)).run()


@case("sam-save-under-a-regular-file", StorageError, "is a file, not a folder")
def _(tmp):
    from napari_samatch.core.sam.litemedsam import LiteMedSAM

    (tmp / "afile").write_text("x")
    model = LiteMedSAM()
    return lambda: model.save(tmp / "afile" / "sam.pt")


@case("checkpoint-save-under-a-regular-file", StorageError, "is a file, not a folder", "another folder")
def _(tmp):
    (tmp / "afile").write_text("x")
    return lambda: save_checkpoint(tmp / "afile" / "run" / "last.pt", {"x": torch.zeros(3)})


# ------------------------------------------------------------------------------------------ the test
@pytest.mark.parametrize("make,error,words", CASES)
def test_bad_input(tmp_path: Path, make, error, words) -> None:
    check_row(tmp_path, make, error, words)


def test_table_size() -> None:
    assert len(CASES) >= 20
