"""Datasets larger than memory: lazy slice sources (core/data/lazy.py) and the engine's bounded store (core/data/store.py).

A synthetic cohort on disk (60 SSL4MIS h5 slices of two sizes, two validation volumes, three NIfTI
volumes) is read lazily and compared with the eager readers value for value; the engine trains on it
lazily and must end with exactly the weights of the eager engine, while its store never caches more
than its budget. The real ACDC files are checked against ``read_ssl4mis_slices`` when present.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from napari_samatch.core.config import preset
from napari_samatch.core.data import datasets, lazy
from napari_samatch.core.data.io import read_label, read_ssl4mis_slices, read_volume
from napari_samatch.core.data.slices import SliceSet
from napari_samatch.core.data.store import MB, SliceStore
from napari_samatch.core.engine.engine import Engine
from napari_samatch.core.errors import DataError

N_SLICES, N_LABELED = 60, 12


def _phantom_slice(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with up to three nested discs, and their labels 0..3."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
    r = np.hypot(yy - cy, xx - cx)
    label = np.zeros(shape, np.uint8)
    for cls, radius in ((1, 0.4), (2, 0.28), (3, 0.15)):
        label[r < radius * min(h, w) * rng.uniform(0.8, 1.1)] = cls
    image = (label * 40.0 + rng.normal(0, 8, shape) + rng.uniform(50, 300)).astype(np.float32)
    return image, label


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """SSL4MIS layout: 6 volumes x 10 slices (40x48 and 48x40), a train list and a val list of 2 volumes."""
    root = tmp_path_factory.mktemp("cohort")
    (root / "data" / "slices").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for v in range(6):
        shape = (40, 48) if v % 2 == 0 else (48, 40)
        for z in range(10):
            sid = f"patient{v:03d}_frame01_slice_{z}"
            image, label = _phantom_slice(rng, shape)
            with h5py.File(root / "data" / "slices" / f"{sid}.h5", "w") as f:
                f["image"], f["label"] = image, label
            ids.append(sid)
    (root / "train_slices.list").write_text("\n".join(ids) + "\n")
    for vid in ("patient100_frame01", "patient101_frame01"):
        pairs = [_phantom_slice(rng, (44, 36)) for _ in range(5)]
        with h5py.File(root / "data" / f"{vid}.h5", "w") as f:
            f["image"] = np.stack([p[0] for p in pairs])
            f["label"] = np.stack([p[1] for p in pairs])
    (root / "val.list").write_text("patient100_frame01\npatient101_frame01\n")
    return root


@pytest.fixture(scope="module")
def niftis(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """Three volumes (Z, Y, X) = (6, 36, 44): float32 .nii, int16 with slope/intercept .nii, and .nii.gz;
    label files with slices 1 and 4 painted."""
    root = tmp_path_factory.mktemp("nifti")
    rng = np.random.default_rng(1)
    images, labels = [], []
    for k, (dtype, ext) in enumerate(((np.float32, ".nii"), (np.int16, ".nii"), (np.float32, ".nii.gz"))):
        pairs = [_phantom_slice(rng, (36, 44)) for _ in range(6)]
        vol = np.stack([p[0] for p in pairs])
        lab = np.zeros(vol.shape, np.uint8)
        lab[[1, 4]] = np.stack([pairs[1][1], pairs[4][1]])
        affine = np.diag([0.8, 0.7, 2.5, 1.0])
        img = nib.Nifti1Image(vol.transpose(2, 1, 0).astype(dtype), affine)  # NIfTI order (X, Y, Z)
        if dtype == np.int16:
            img.header.set_slope_inter(0.5, -3.0)  # dataobj applies the scaling per slice as for the volume
        images.append(root / f"vol{k}{ext}")
        labels.append(root / f"vol{k}_labels{ext}")
        nib.save(img, images[-1])
        nib.save(nib.Nifti1Image(lab.transpose(2, 1, 0), affine), labels[-1])
    return images, labels


def _same_arrays(a, b) -> None:
    assert (a is None) == (b is None)
    if a is not None:
        assert a.shape == b.shape and np.array_equal(a, b)


def _count_reads(monkeypatch) -> list:
    calls: list = []
    original = lazy.read_raw
    monkeypatch.setattr(lazy, "read_raw", lambda ref: (calls.append(ref), original(ref))[1])
    return calls


# ------------------------------------------------------------------------------------ sources
def test_ssl4mis_lazy_equals_eager_and_reads_nothing_up_front(cohort, monkeypatch):
    reads = _count_reads(monkeypatch)
    data = datasets.ssl4mis_slices(cohort, labeled_count=N_LABELED, lazy=True)
    # validate() reads only the labeled slices' labels (image shapes come from the headers)
    assert len(reads) == N_LABELED and all(r.dataset == "label" for r in reads)
    eager = datasets.ssl4mis_slices(cohort, labeled_count=N_LABELED)
    assert data.is_lazy and not eager.is_lazy
    assert (data.ids, data.groups, data.positions) == (eager.ids, eager.groups, eager.positions)
    assert data.labeled_indices() == eager.labeled_indices() == list(range(N_LABELED))
    assert data.hidden_indices() == eager.hidden_indices() == list(range(N_LABELED, N_SLICES))
    for i in range(N_SLICES):
        assert data.images[i].dtype == np.float32 and data.image_shape(i) == eager.images[i].shape
        _same_arrays(data.images[i], eager.images[i])
        _same_arrays(data.labels[i], eager.labels[i])
        _same_arrays(data.hidden[i], eager.hidden[i])
    sub = data.subset([3, 40, 59])
    assert sub.is_lazy and sub.labeled_indices() == [0]
    _same_arrays(sub.images[2], eager.images[59])
    for got, want in zip(sub.to_tensors(32), eager.subset([3, 40, 59]).to_tensors(32)):
        assert torch.equal(got, want)


def test_ssl4mis_validation_volumes_lazy(cohort):
    train, val = datasets.ssl4mis(cohort, labeled=N_LABELED, lazy=True)
    train_e, val_e = datasets.ssl4mis(cohort, labeled=N_LABELED, lazy=False)
    assert train.is_lazy and val.is_lazy and not val_e.is_lazy
    assert val.ids == val_e.ids and val.groups == val_e.groups and len(val) == 10
    for i in range(len(val)):
        _same_arrays(val.images[i], val_e.images[i])
        _same_arrays(val.labels[i], val_e.labels[i])
    # automatic: lazy only when the slices would not fit the budget
    assert not datasets.ssl4mis(cohort, labeled=N_LABELED, lazy=None, budget_mb=1.0)[0].is_lazy
    assert datasets.ssl4mis(cohort, labeled=N_LABELED, lazy=None, budget_mb=0.1)[0].is_lazy


def test_ssl4mis_lazy_errors(cohort, tmp_path):
    with pytest.raises(DataError, match="labeled_count"):
        datasets.ssl4mis_slices(cohort, labeled_count=61, lazy=True)
    (tmp_path / "data" / "slices").mkdir(parents=True)
    (tmp_path / "train_slices.list").write_text("missing_slice_0\n")
    with pytest.raises(DataError, match="does not exist"):
        datasets.ssl4mis_slices(tmp_path, labeled_count=1, lazy=True)


@pytest.mark.parametrize("axis", [0, 1])
def test_nifti_lazy_equals_eager(niftis, axis, monkeypatch):
    images, labels = niftis
    reads = _count_reads(monkeypatch)
    data = datasets.nifti_cohort(images, labels, axis=axis)
    # one read of each label volume (to find painted slices), then the labeled slices' labels by validate()
    assert sum(r.index is None for r in reads) == 3
    n = 6 if axis == 0 else 36
    assert len(data) == 3 * n and data.num_classes == 4
    offset = 0
    for ip, lp in zip(images, labels):
        vol = read_volume(ip)
        vol.labels = read_label(lp, like=vol)
        eager = SliceSet.from_volume(vol, axis=axis, num_classes=4)
        assert [offset + i for i in eager.labeled_indices()] == [i for i in data.labeled_indices()
                                                               if offset <= i < offset + n]
        for i in range(n):
            assert data.image_shape(offset + i) == eager.images[i].shape
            _same_arrays(data.images[offset + i], eager.images[i])
            _same_arrays(data.labels[offset + i], eager.labels[i])
        offset += n
    # volumes outside labeled_volumes: their labels become hidden and are never read here
    part = datasets.nifti_cohort(images, labels, labeled_volumes=[0])
    assert part.labeled_indices() == [1, 4] and part.hidden_indices() == list(range(6, 18))
    _same_arrays(part.hidden[7], read_label(labels[1])[1])


def test_nifti_lazy_errors(niftis, tmp_path):
    images, labels = niftis
    with pytest.raises(DataError, match="one per image"):
        datasets.nifti_cohort(images, labels[:1])
    with pytest.raises(DataError, match="not an existing NIfTI"):
        datasets.nifti_cohort([tmp_path / "nope.nii"])
    bad = np.zeros((44, 36, 6), np.float32)
    bad[3, 3, 2] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), tmp_path / "nan.nii")
    nan_set = lazy.nifti_slices([tmp_path / "nan.nii"], [labels[0]])
    nan_set.images[1]  # a clean slice reads fine; the bad one says which slice it is
    with pytest.raises(DataError, match="slice 2 of nan.nii holds NaN"):
        nan_set.images[2]


# ------------------------------------------------------------------------------------ the store
def test_store_indexes_like_the_stacked_tensor_within_budget(cohort):
    data = datasets.ssl4mis_slices(cohort, labeled_count=N_LABELED)
    images, labels, labeled = data.to_tensors(32)
    per_image = 32 * 32 * 4
    store = SliceStore(data.images, 32, "cpu", budget_bytes=5 * per_image, kind="image")
    lstore = SliceStore(data.labels, 32, "cpu", budget_bytes=3 * 32 * 32, kind="label")
    assert len(store) == N_SLICES and store.shape == images.shape and lstore.shape == labels.shape
    ix = torch.tensor([0, 59, 7, 7, 30])
    assert torch.equal(store[ix], images[ix]) and torch.equal(store[[3, -1]], images[[3, -1]])
    assert torch.equal(store[4], images[4]) and torch.equal(store[10:14], images[10:14])
    assert torch.equal(lstore[ix], labels[ix]) and lstore[ix].dtype == torch.int64
    assert torch.equal(lstore[5], labels[5]) and (lstore[[40]] == -1).all()
    rng = np.random.default_rng(0)
    for _ in range(50):
        pick = rng.integers(0, N_SLICES, 4).tolist()
        assert torch.equal(store[pick], images[pick])
        assert store.bytes <= store.budget_bytes and len(store._lru) <= 5
    stats = store.stats()
    assert stats["peak_bytes"] <= 5 * per_image and stats["hits"] > 0 and stats["misses"] > 0
    assert lstore.stats()["peak_bytes"] <= 3 * 32 * 32
    assert torch.equal(store.to("cpu"), images)
    with pytest.raises(IndexError):
        store[[N_SLICES]]


def _config(data: SliceSet, method: str, **kw):
    base = dict(method=method, warmup_method="supervised" if method == "supervised" else "unimatch",
                size=32, warmup_iters=2, sam_iters=0, joint_iters=3, batch_labeled=2, batch_unlabeled=2,
                eval_every=0, checkpoint_every=0, device="cpu", threads=1, seed=3)
    base.update(kw)
    return preset("quick", **base).replace(num_classes=data.num_classes, class_names=list(data.class_names))


@pytest.mark.parametrize("method", ["supervised", "unimatch"])
def test_engine_lazy_trains_exactly_like_eager(cohort, method):
    eager_data = datasets.ssl4mis_slices(cohort, labeled_count=N_LABELED)
    lazy_data = datasets.ssl4mis_slices(cohort, labeled_count=N_LABELED, lazy=True)
    # build and run one after the other: Engine() seeds torch's global stream, which dropout draws from
    eager = Engine(eager_data, _config(eager_data, method))
    eager.run()
    budget_mb = 6 * 32 * 32 * 4 / 0.8 / MB  # room for 6 resized images: far fewer than the 60 slices
    small = Engine(lazy_data, _config(lazy_data, method, data_budget_mb=budget_mb))
    assert isinstance(eager.images, torch.Tensor)
    assert isinstance(small.images, SliceStore) and isinstance(small.labels, SliceStore)
    assert torch.equal(small.labeled_idx, eager.labeled_idx) and torch.equal(small.unlabeled_idx, eager.unlabeled_idx)
    small.run()
    for (name, a), (_, b) in zip(eager.unet.state_dict().items(), small.unet.state_dict().items()):
        assert torch.equal(a, b), name  # same seed, same slices, same values: identical weights
    stats = small.images.stats()
    assert stats["misses"] > 0 and stats["peak_bytes"] <= small.images.budget_bytes
    assert stats["peak_bytes"] <= 6 * 32 * 32 * 4 and stats["entries"] <= 6
    assert small.labels.stats()["peak_bytes"] <= small.labels.budget_bytes
    assert torch.equal(small.predict([0, 20, 59]), eager.predict([0, 20, 59]))


def test_engine_uses_the_store_above_the_budget_for_in_memory_data(cohort):
    data = datasets.ssl4mis_slices(cohort, labeled_count=N_LABELED)
    stacked = Engine(data, _config(data, "supervised"))
    stacked.run()
    stored = Engine(data, _config(data, "supervised", data_budget_mb=0.1))  # 60 x 32 x 32 x 12 B = 0.7 MB
    stored.run()
    assert isinstance(stacked.images, torch.Tensor) and isinstance(stored.images, SliceStore)
    for a, b in zip(stacked.unet.parameters(), stored.unet.parameters()):
        assert torch.equal(a, b)


def test_engine_validates_on_lazy_volumes(cohort):
    train, val = datasets.ssl4mis(cohort, labeled=N_LABELED, lazy=True)
    train_e, val_e = datasets.ssl4mis(cohort, labeled=N_LABELED)
    runs = []
    for t, v in ((train, val), (train_e, val_e)):
        engine = Engine(t, _config(t, "unimatch", eval_every=5, warmup_iters=0), val=v)
        engine.run()
        runs.append(engine.history[-1])
    assert runs[0]["val_mean_dice"] == runs[1]["val_mean_dice"]


def test_cli_train_lazy(cohort, tmp_path):
    from napari_samatch.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--ssl4mis", str(cohort), "--labeled", str(N_LABELED), "--lazy", "--method", "supervised",
               "--warmup-iters", "0", "--sam-iters", "0", "--joint-iters", "2", "--size", "32", "--device", "cpu",
               "--threads", "1", "--eval-every", "2", "--out", str(out), "--quiet"])
    assert rc == 0 and (out / "model.pt").is_file() and (out / "metrics.json").is_file()


# ------------------------------------------------------------------------------------ real data
def test_acdc_lazy_reader_matches_eager_reader(acdc):
    limit = 40
    vols = read_ssl4mis_slices(acdc, limit=limit)  # the eager reader behind SliceSet.from_ssl4mis
    eager = datasets.ssl4mis_slices(acdc, labeled_count=20, limit=limit)
    data = datasets.ssl4mis_slices(acdc, labeled_count=20, limit=limit, lazy=True)
    assert data.ids == [v.name for v in vols] and data.groups == eager.groups
    assert data.positions == eager.positions
    for i, v in enumerate(vols):
        assert data.image_shape(i) == v.image.shape
        _same_arrays(data.images[i], eager.images[i])  # normalised exactly as the eager path
        _same_arrays(data.labels[i] if i < 20 else data.hidden[i], v.labels)
        assert data.labels[i] is None if i >= 20 else data.hidden[i] is None
