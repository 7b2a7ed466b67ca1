"""Embedding cache: a frozen SAM encoder means each slice is encoded once.

Embeddings are kept as fp16 on the CPU up to a memory budget; entries beyond it are written to a
private temporary folder (one ``.npy`` per entry) and read back on demand. Entries never move
between memory and disk: first come stays in memory, so an epoch over a dataset larger than the
budget reads the overflow from disk without rewriting anything (LRU would thrash).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError, StorageError

Key = Hashable  # slice keys: ints or strings


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class EmbeddingCache:
    """fp16 embeddings by slice key, in memory up to ``budget_mb`` and spilled to disk beyond it."""

    def __init__(self, budget_mb: float = 2048, spill_dir: str | Path | None = None) -> None:
        if budget_mb < 0:
            raise DataError(f"The embedding cache budget must be >= 0 MB; got {budget_mb}.")
        self.budget_bytes = int(budget_mb * 1024 * 1024)
        self._spill_parent = Path(spill_dir) if spill_dir is not None else None
        self._spill_path: Path | None = None  # created lazily: most runs never spill
        self._finalizer: weakref.finalize | None = None
        self._memory: dict[Key, Tensor] = {}
        self._disk: dict[Key, Path] = {}
        self._counter = 0
        self._lock = threading.RLock()
        self.bytes_in_memory = 0
        self.bytes_on_disk = 0
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        with self._lock:
            return len(self._memory) + len(self._disk)

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._memory or key in self._disk

    @property
    def spill_path(self) -> Path | None:
        """The private folder holding spilled entries (None until the first spill)."""
        return self._spill_path

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._memory) + len(self._disk), "in_memory": len(self._memory),
                    "on_disk": len(self._disk), "bytes_in_memory": self.bytes_in_memory,
                    "bytes_on_disk": self.bytes_on_disk, "hits": self.hits, "misses": self.misses}

    def invalidate(self) -> None:
        """Drop every entry (memory and disk); counters of hits/misses are kept."""
        with self._lock:
            for path in self._disk.values():
                path.unlink(missing_ok=True)
            self._memory.clear()
            self._disk.clear()
            self.bytes_in_memory = 0
            self.bytes_on_disk = 0

    def close(self) -> None:
        """Drop everything and remove the spill folder."""
        with self._lock:
            self.invalidate()
            if self._finalizer is not None:
                self._finalizer()  # removes the folder once; later calls are no-ops
            self._spill_path = None
            self._finalizer = None

    def __enter__(self) -> EmbeddingCache:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ storage
    def _spill_folder(self) -> Path:
        if self._spill_path is None:
            try:
                if self._spill_parent is not None:
                    self._spill_parent.mkdir(parents=True, exist_ok=True)
                folder = tempfile.mkdtemp(prefix="samatch-emb-", dir=self._spill_parent)
            except OSError as exc:
                raise StorageError(f"Could not create a folder for spilled SAM embeddings ({exc}). "
                                   "Give the cache a writable spill_dir or a larger memory budget.") from exc
            self._spill_path = Path(folder)
            # the folder goes away with the cache even if close() is never called
            self._finalizer = weakref.finalize(self, _remove_tree, folder)
        return self._spill_path

    def _put_one(self, key: Key, value: Tensor) -> None:
        nbytes = value.numel() * value.element_size()
        self._drop(key)
        if self.bytes_in_memory + nbytes <= self.budget_bytes:
            self._memory[key] = value
            self.bytes_in_memory += nbytes
            return
        path = self._spill_folder() / f"{self._counter:09d}.npy"
        self._counter += 1
        try:
            np.save(path, value.numpy())
        except OSError as exc:
            raise StorageError(f"Could not write a spilled SAM embedding to {path} ({exc}). "
                               "Free disk space or raise the cache's memory budget.") from exc
        self._disk[key] = path
        self.bytes_on_disk += path.stat().st_size

    def _drop(self, key: Key) -> None:
        if key in self._memory:
            old = self._memory.pop(key)
            self.bytes_in_memory -= old.numel() * old.element_size()
        elif key in self._disk:
            path = self._disk.pop(key)
            self.bytes_on_disk -= path.stat().st_size if path.exists() else 0
            path.unlink(missing_ok=True)

    def put_many(self, keys: Sequence[Key], embeddings: Tensor) -> None:
        """Store ``embeddings[i]`` under ``keys[i]`` (as fp16 on the CPU), replacing older entries."""
        if len(keys) != embeddings.shape[0]:
            raise DataError(f"put_many got {len(keys)} keys for {embeddings.shape[0]} embeddings.")
        values = embeddings.detach().to("cpu", torch.float16)
        with self._lock:
            for i, key in enumerate(keys):
                self._put_one(key, values[i].clone())  # clone: don't pin the whole batch in memory

    def get_many(self, keys: Sequence[Key]) -> list[Tensor | None]:
        """fp16 CPU embeddings for ``keys``; None where a key is not cached. Counts hits and misses."""
        return self._get(keys, count=True)

    def _get(self, keys: Sequence[Key], count: bool) -> list[Tensor | None]:
        with self._lock:
            found: list[Tensor | None] = []
            for key in keys:
                if key in self._memory:
                    found.append(self._memory[key])
                elif key in self._disk:
                    found.append(torch.from_numpy(np.load(self._disk[key])))
                else:
                    found.append(None)
            if count:
                n_hit = sum(v is not None for v in found)
                self.hits += n_hit
                self.misses += len(found) - n_hit
            return found

    # ------------------------------------------------------------------ the common path
    def embed(
        self,
        keys: Sequence[Key],
        images_fn: Callable[[list], Tensor],
        backend,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ) -> Tensor:
        """Embeddings (len(keys), *embed_shape) float32 on ``device``, encoding only uncached keys.

        ``images_fn(missing_keys)`` returns their images (n, 1|3, S, S) in [0, 1]; they are encoded
        in batches of ``batch_size`` with gradients off and the encoder in eval mode.
        """
        keys = list(keys)
        with self._lock:
            absent = [k for k in keys if k not in self]
            self.misses += len(absent)
            self.hits += len(keys) - len(absent)
        missing = list(dict.fromkeys(absent))  # each slice encoded once even if asked twice
        if missing:
            encoder = backend.image_encoder
            was_training = encoder.training
            if was_training:  # a needless switch rebuilds TinyViT's attention biases (~0.25 s on a CPU)
                encoder.eval()
            try:
                with torch.no_grad():
                    for start in range(0, len(missing), max(1, batch_size)):
                        chunk = missing[start:start + max(1, batch_size)]
                        images = images_fn(chunk)
                        if images.shape[0] != len(chunk):
                            raise DataError(f"images_fn returned {images.shape[0]} images for "
                                            f"{len(chunk)} keys.")
                        self.put_many(chunk, backend.encode(images.to(device)))
            finally:
                if was_training:
                    encoder.train()
        values = self._get(keys, count=False)
        if any(v is None for v in values):  # only if another thread invalidated meanwhile
            raise DataError("The embedding cache was cleared while embedding; run the step again.")
        if not values:
            return torch.zeros((0, *backend.embed_shape), device=device)
        # the entries are fp16 on the CPU: under a CPU bf16 autocast, stack would refuse that mix of types
        with torch.autocast("cpu", enabled=False):
            stacked = torch.stack(values)
        return stacked.to(device=device, dtype=torch.float32)
