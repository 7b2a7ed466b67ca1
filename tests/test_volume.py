"""Volume validation, slice bookkeeping and colour conversion."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samatch.core.data.volume import Volume, as_3d, coerce_labels, to_single_channel
from napari_samatch.core.errors import DataError


def _vol(shape=(4, 8, 9), **kw) -> Volume:
    return Volume(np.zeros(shape, np.float32), **kw)


def test_valid_2d_and_3d():
    assert _vol((8, 9)).validate() is not None
    lab = np.zeros((4, 8, 9), np.uint8)
    lab[1, 2, 3] = 2
    _vol(labels=lab, spacing=(2.0, 1.0, 1.0), affine=np.eye(4)).validate(num_classes=3)


def _nan_image():
    img = np.zeros((3, 4, 4), np.float32)
    img[0, 0, :3] = np.nan
    return img


BAD = [
    ("4d", Volume(np.zeros((2, 3, 4, 5), np.float32)), None, "4 dimensions"),
    ("1d", Volume(np.zeros(7, np.float32)), None, "1 dimensions"),
    ("empty", Volume(np.zeros((0, 5), np.float32)), None, "empty"),
    ("complex", Volume(np.zeros((4, 4), np.complex64)), None, "np.abs"),
    ("bool", Volume(np.zeros((4, 4), bool)), None, "astype(np.float32)"),
    ("nan", Volume(_nan_image()), None, "3 non-finite"),
    ("inf", Volume(np.full((4, 4), np.inf, np.float32)), None, "np.nan_to_num"),
    ("label shape", Volume(np.zeros((4, 4), np.float32), labels=np.zeros((4, 5), np.uint8)), None, "shape"),
    ("negative", Volume(np.zeros((4, 4), np.float32), labels=-np.ones((4, 4), np.int16)), None, "negative"),
    ("fraction", Volume(np.zeros((4, 4), np.float32), labels=np.full((4, 4), 0.5)), None, "non-integer"),
    ("too many", Volume(np.zeros((4, 4), np.float32), labels=np.full((4, 4), 3, np.uint8)), 3, "class 3"),
    ("spacing", Volume(np.zeros((4, 4), np.float32), spacing=(1.0,)), None, "spacing"),
    ("affine", Volume(np.zeros((4, 4), np.float32), affine=np.eye(3)), None, "4x4"),
]


@pytest.mark.parametrize("case,vol,num_classes,needle", BAD, ids=[b[0] for b in BAD])
def test_validate_rejects(case, vol, num_classes, needle):
    with pytest.raises(DataError) as err:
        vol.validate(num_classes=num_classes)
    assert needle in str(err.value)


def test_labeled_slices_3d_axes_and_2d():
    lab = np.zeros((5, 6, 7), np.uint8)
    lab[1, 2, 3] = 1
    lab[3, 4, 5] = 2
    vol = _vol((5, 6, 7), labels=lab)
    assert vol.labeled_slices().tolist() == [1, 3]
    assert vol.labeled_slices(axis=1).tolist() == [2, 4]
    assert vol.labeled_slices(axis=-1).tolist() == [3, 5]
    assert _vol().labeled_slices().tolist() == []  # no labels at all
    flat = Volume(np.zeros((6, 7), np.float32), labels=np.zeros((6, 7), np.uint8))
    assert flat.labeled_slices().tolist() == []
    flat.labels[0, 0] = 1
    assert flat.labeled_slices().tolist() == [0]
    with pytest.raises(DataError):
        vol.labeled_slices(axis=3)


def test_as_3d():
    img = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert as_3d(img[0]).shape == (1, 3, 4)
    moved = as_3d(img, axis=2)
    assert moved.shape == (4, 2, 3)
    assert np.array_equal(moved[1], img[:, :, 1])
    ims, labs = Volume(img[0]).as_3d()
    assert ims.shape == (1, 3, 4) and labs is None
    assert Volume(img).num_slices(1) == 3 and Volume(img[0]).num_slices() == 1


def test_to_single_channel_bt601_and_alpha():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1] = 100  # gray stays gray
    y = to_single_channel(rgb)
    assert y.dtype == np.float32 and y.shape == (2, 3)
    np.testing.assert_allclose(y[0], [0.299 * 255, 0.587 * 255, 0.114 * 255], rtol=1e-5)
    np.testing.assert_allclose(y[1], 100, rtol=1e-5)
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(to_single_channel(rgba), y)  # alpha dropped, not blended
    gray = np.ones((5, 6), np.uint16)
    assert to_single_channel(gray).dtype == np.float32
    assert to_single_channel(np.zeros((5, 6, 3)), rgb=False).shape == (5, 6, 3)


def test_coerce_labels():
    assert coerce_labels(np.array([[True, False]])).dtype == np.uint8
    assert coerce_labels(np.array([0.0, 2.0])).tolist() == [0, 2]
    assert coerce_labels(np.array([0, 300])).dtype == np.uint16
    for bad in (np.array([0.5]), np.array([-1]), np.array(["a"])):
        with pytest.raises(DataError):
            coerce_labels(bad)
