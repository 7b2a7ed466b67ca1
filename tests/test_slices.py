"""SliceSet: building from volumes / ACDC, tensors, validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_samatch.core.data import datasets
from napari_samatch.core.data.sample import make_cardiac_phantom, sample_labeled_slices
from napari_samatch.core.data.slices import SliceSet, normalise_slice, resize_images, resize_labels_back
from napari_samatch.core.data.volume import Volume
from napari_samatch.core.errors import DataError

LIMIT = 120  # the first 120 listed slices: 68 labeled + 52 unlabeled; the full list is the slow test


@pytest.fixture(scope="module")
def acdc_set(acdc: Path) -> SliceSet:  # ``acdc`` (the folder) comes from conftest.py
    return datasets.ssl4mis_slices(acdc, labeled_count=68, limit=LIMIT)


def _check_split(data: SliceSet, ids: list[str]) -> None:
    n = len(ids)
    assert len(data) == n and data.ids == ids
    assert data.labeled_indices() == list(range(68))
    assert data.unlabeled_indices() == list(range(68, n))
    assert all(data.hidden[i] is None for i in range(68))
    assert all(data.hidden[i] is not None and data.labels[i] is None for i in range(68, n))


@pytest.mark.slow
def test_from_ssl4mis_full_list(acdc):
    ids = (acdc / "train_slices.list").read_text().split()
    assert len(ids) == 1312
    _check_split(datasets.ssl4mis_slices(acdc, labeled_count=68), ids)


def test_from_ssl4mis_split(acdc, acdc_set):
    ids = (acdc / "train_slices.list").read_text().split()
    _check_split(acdc_set, ids[:LIMIT])
    with pytest.raises(DataError, match="labeled_count"):
        datasets.ssl4mis_slices(acdc, labeled_count=10, limit=5)
    data = acdc_set
    assert data.num_classes == 4 and data.class_names == ["background", "RV", "Myo", "LV"]
    assert data.groups[0] == ids[0].rpartition("_slice_")[0] and data.positions[0] == int(ids[0].rpartition("_")[2])
    for im in data.images[:50]:
        assert im.dtype == np.float32 and im.min() == 0.0 and im.max() == 1.0


def test_to_tensors_shapes_and_masks(acdc_set):
    sub = acdc_set.subset(list(range(60, 80)))  # 8 labeled, 12 unlabeled, various sizes
    images, labels, labeled = sub.to_tensors(64)
    assert images.shape == (20, 1, 64, 64) and images.dtype == torch.float32
    assert labels.shape == (20, 64, 64) and labels.dtype == torch.int64
    assert labeled.dtype == torch.bool and labeled.tolist() == [True] * 8 + [False] * 12
    assert (labels[~labeled] == -1).all() and (labels[labeled] >= 0).all() and labels.max() <= 3
    assert 0.0 <= images.min() and images.max() <= 1.0
    hidden = sub.hidden_tensor(64)
    assert (hidden[:8] == -1).all() and (hidden[8:] >= 0).all()
    # Nearest resampling keeps only existing classes.
    assert set(labels[labeled].unique().tolist()) <= set(np.unique(np.concatenate([lab.ravel() for lab in sub.labels[:8]])))


def test_from_volume_on_phantom():
    vol = make_cardiac_phantom()
    picked = sample_labeled_slices(vol)
    painted = np.zeros_like(vol.labels)
    painted[picked] = vol.labels[picked]
    sparse = Volume(vol.image, painted, vol.spacing, name="ph", metadata=dict(vol.metadata))
    data = SliceSet.from_volume(sparse)
    assert data.labeled_indices() == picked and len(data) == vol.shape[0]
    assert data.num_classes == 4 and data.class_names == ["background", "RV", "Myo", "LV"]
    assert all(h is None for h in data.hidden) and data.groups == ["ph"] * len(data)
    images, labels, labeled = data.to_tensors(96)
    assert images.shape == (12, 1, 96, 96) and labeled.sum() == 3
    # An explicit list (even an empty slice) decides what counts as labeled.
    data2 = SliceSet.from_volume(sparse, labeled=[0, 5])
    assert data2.labeled_indices() == [0, 5]
    # Another axis: slices of shape (Z, W).
    data3 = SliceSet.from_volume(sparse, axis=1, num_classes=4)
    assert data3.images[0].shape == (12, 160) and len(data3) == 160


def test_from_volume_errors():
    vol = make_cardiac_phantom(shape=(4, 48, 48))
    empty = Volume(vol.image, np.zeros_like(vol.labels), name="v")
    with pytest.raises(DataError, match="Paint at least one slice"):
        SliceSet.from_volume(empty)
    with pytest.raises(DataError, match="Paint at least one slice"):
        SliceSet.from_volume(Volume(vol.image, None, name="v"))
    with pytest.raises(DataError, match="only 2 classes"):
        SliceSet.from_volume(vol, num_classes=2)
    with pytest.raises(DataError, match="does not exist"):
        SliceSet.from_volume(vol, labeled=[7])


def test_from_volumes_busi_like():
    rng = np.random.default_rng(0)
    vols = [Volume(rng.random((20 + i, 30)).astype(np.float32), (rng.random((20 + i, 30)) > 0.8).astype(np.uint8),
                   name=f"img{i}") for i in range(4)]
    data = SliceSet.from_volumes(vols, labeled_volumes=[0, 2], class_names=["background", "lesion"])
    assert data.ids == ["img0", "img1", "img2", "img3"] and data.labeled_indices() == [0, 2]
    assert data.hidden[1] is not None and data.hidden[0] is None and data.num_classes == 2
    with pytest.raises(DataError, match="Paint"):
        SliceSet.from_volumes(vols, labeled_volumes=[])


def test_resize_labels_back_and_normalise():
    lab = np.random.default_rng(1).integers(0, 4, (40, 30)).astype(np.uint8)
    t = torch.from_numpy(lab.astype(np.int64))
    small = resize_labels_back(t, (20, 15))
    assert small.shape == (20, 15) and small.dtype == torch.int64
    back = resize_labels_back(small.numpy().astype(np.uint8), (40, 30))
    assert back.shape == (40, 30) and back.dtype == np.uint8
    np.testing.assert_array_equal(resize_labels_back(lab, (40, 30)), lab)
    batch = resize_labels_back(torch.zeros((3, 8, 8), dtype=torch.int64), (5, 6))
    assert batch.shape == (3, 5, 6)
    assert normalise_slice(np.full((3, 3), 7.0)).max() == 0.0
    n = normalise_slice(np.array([[2.0, 4.0]]))
    np.testing.assert_allclose(n, [[0.0, 1.0]])


def test_subset_and_post_init_checks():
    data = SliceSet([np.zeros((4, 4), np.float32)] * 3, [np.zeros((4, 4), np.uint8), None, None], [None] * 3,
                    ["a", "b", "c"], ["g"] * 3, [0, 1, 2], 2)
    assert data.class_names == ["background", "class 1"]
    sub = data.subset([2, 0])
    assert sub.ids == ["c", "a"] and sub.labeled_indices() == [1]
    with pytest.raises(DataError):
        SliceSet([np.zeros((4, 4))], [None, None], [None], ["a"], ["g"], [0], 2)


def test_resizing_a_few_slices_at_a_time_gives_the_whole_stacks_values():
    """resize_images goes 16 slices at a time (a CT volume's stack would be 300 MB more at once): the values
    are those of resampling the whole stack in one call."""
    rng = np.random.default_rng(0)
    big = [rng.random((40, 56)).astype(np.float32) for _ in range(37)]
    small = [rng.random((24, 24)).astype(np.float32) for _ in range(3)]
    images = big[:20] + small + big[20:]  # two shapes, interleaved
    out = resize_images(images, 32)
    whole = F.interpolate(torch.from_numpy(np.stack(big))[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.equal(torch.cat([out[:20], out[23:]]), whole)
    assert torch.equal(out[20:23], F.interpolate(torch.from_numpy(np.stack(small))[:, None], size=(32, 32),
                                                 mode="bilinear", align_corners=False))
