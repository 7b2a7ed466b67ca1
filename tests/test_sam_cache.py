"""EmbeddingCache: memory budget, disk spill, encode-only-missing, cleanup, thread safety."""

from __future__ import annotations

import gc
import threading

import pytest
import torch
from torch import nn

from napari_samatch.core.errors import DataError
from napari_samatch.core.sam.cache import EmbeddingCache

SHAPE = (4, 8, 8)  # 512 bytes per fp16 entry
ENTRY = 4 * 8 * 8 * 2


class FakeBackend(nn.Module):
    """Stands in for a SAM backend: deterministic 'embeddings', counts encoder calls and images."""

    embed_shape = SHAPE

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Linear(1, 1)
        self.calls = 0
        self.images = 0
        self.saw_grad = False
        self.saw_training = False

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += images.shape[0]
        self.saw_grad |= torch.is_grad_enabled()
        self.saw_training |= self.image_encoder.training
        return images.mean(dim=(1, 2, 3))[:, None, None, None] + torch.linspace(-1, 1, 256).view(1, *SHAPE)


def images_for(keys):
    return torch.stack([torch.full((1, 16, 16), float(k) / 10.0) for k in keys])


def expected(keys):
    return FakeBackend().encode(images_for(keys))


def test_spills_beyond_budget_and_round_trips(tmp_path):
    cache = EmbeddingCache(budget_mb=3 * ENTRY / 2**20, spill_dir=tmp_path)
    keys = list(range(10))
    values = torch.randn(10, *SHAPE)
    cache.put_many(keys, values)
    assert cache.stats()["in_memory"] == 3 and cache.stats()["on_disk"] == 7
    assert cache.bytes_in_memory == 3 * ENTRY and cache.bytes_on_disk >= 7 * ENTRY
    folder = cache.spill_path
    assert folder is not None and folder.parent == tmp_path and len(list(folder.glob("*.npy"))) == 7
    got = cache.get_many(keys + ["absent"])
    assert got[-1] is None and (cache.hits, cache.misses) == (10, 1)
    back = torch.stack(got[:-1]).float()
    assert torch.allclose(back, values, rtol=1e-3, atol=1e-3)  # fp16 precision
    cache.put_many([9], torch.zeros(1, *SHAPE))  # replacing an entry frees its old file
    assert len(list(folder.glob("*.npy"))) == 7 and cache.get_many([9])[0].abs().max() == 0
    cache.close()
    assert not folder.exists() and len(cache) == 0 and cache.bytes_on_disk == 0


def test_embed_encodes_only_missing_keys():
    backend = FakeBackend().train()
    cache = EmbeddingCache(budget_mb=4 * ENTRY / 2**20)
    first = cache.embed([1, 2, 3], images_for, backend, batch_size=2)
    assert first.dtype == torch.float32 and first.shape == (3, *SHAPE)
    assert (backend.calls, backend.images) == (2, 3)  # batches of 2 and 1
    assert torch.allclose(first, expected([1, 2, 3]), atol=2e-3)
    second = cache.embed([3, 4, 1, 4, 5, 6], images_for, backend, batch_size=8)
    assert (backend.calls, backend.images) == (3, 6)  # only 4, 5, 6 encoded, 4 only once
    assert torch.allclose(second, expected([3, 4, 1, 4, 5, 6]), atol=2e-3)
    assert cache.stats()["on_disk"] == 2  # budget holds 4 entries
    assert (cache.hits, cache.misses) == (2, 3 + 4)  # per requested key
    assert not backend.saw_grad and not backend.saw_training and backend.image_encoder.training
    again = cache.embed([1, 2, 3, 4, 5, 6], images_for, backend)
    assert backend.calls == 3 and torch.allclose(again[:3], first)
    cache.close()


def test_invalidate():
    backend = FakeBackend()
    cache = EmbeddingCache(budget_mb=0)  # everything spills
    cache.embed(["a", "b"], lambda ks: images_for([1] * len(ks)), backend)
    folder = cache.spill_path
    assert cache.bytes_in_memory == 0 and len(list(folder.glob("*.npy"))) == 2
    cache.invalidate()  # a new slice list (Engine.set_data): old keys are meaningless
    assert len(cache) == 0 and not list(folder.glob("*.npy")) and cache.bytes_on_disk == 0
    cache.close()
    assert not folder.exists()


def test_spill_folder_removed_on_garbage_collection():
    cache = EmbeddingCache(budget_mb=0)
    cache.put_many([0], torch.zeros(1, *SHAPE))
    folder = cache.spill_path
    assert folder.exists()
    del cache
    gc.collect()
    assert not folder.exists()


def test_bad_inputs():
    cache = EmbeddingCache(budget_mb=1)
    with pytest.raises(DataError):
        cache.put_many([1, 2], torch.zeros(1, *SHAPE))
    with pytest.raises(DataError):
        cache.embed([1, 2], lambda ks: images_for([1]), FakeBackend())
    with pytest.raises(DataError):
        EmbeddingCache(budget_mb=-1)


def test_worker_writes_while_main_reads():
    cache = EmbeddingCache(budget_mb=20 * ENTRY / 2**20)
    backend = FakeBackend()
    keys = list(range(60))

    def worker():
        for start in range(0, 60, 5):
            cache.embed(keys[start:start + 5], images_for, backend)

    thread = threading.Thread(target=worker)
    thread.start()
    while thread.is_alive():
        for value in cache.get_many(keys):
            assert value is None or value.shape == SHAPE
    thread.join()
    assert len(cache) == 60 and backend.images == 60
    assert torch.allclose(torch.stack(cache.get_many(keys)).float(), expected(keys), atol=2e-3)
    cache.close()
