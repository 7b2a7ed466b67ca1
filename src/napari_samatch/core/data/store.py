"""The engine's training slices, resized to ``size x size``: one stacked tensor, or a bounded store.

Small data (the plugin's volume, ACDC) is resized once and stacked on the device, as always. When the
stacked tensors would exceed ``data_budget_mb``, or the SliceSet is lazy (``core.data.lazy``), the engine
gets a :class:`SliceStore` instead, which the step, preview, predict and refiner index exactly like
the tensor (``store[ix]`` with a LongTensor or a list -> a tensor on the device). It reads and
resizes the requested slices on demand and keeps the most recently used ones (on the CPU) up to its
budget: an LRU, because each step draws a few random slices and the labeled ones, drawn every step,
are few and stay hot.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .slices import SliceSet, resize_images, resize_label_list

MB = 1024 * 1024
IMAGE_SHARE = 0.8  # of the budget: a cached image (float32) is 4x a cached label (int8)


class SliceStore:
    """``store[ix]``: the resized slices ``ix`` on ``device``, read through a bounded LRU.

    ``kind='image'`` gives float32 ``(n, 1, S, S)``; ``kind='label'`` int64 ``(n, S, S)`` with -1 for a
    slice without a label (those are not cached: they cost nothing to make). An int index drops the
    first axis, as tensor indexing does. ``peak_bytes`` is the most the cache ever held.
    """

    def __init__(self, arrays: Sequence[Any], size: int, device: torch.device | str, budget_bytes: int,
                 kind: str = "image") -> None:
        if kind not in ("image", "label"):
            raise ValueError(f"kind must be 'image' or 'label', not {kind!r}")
        self.arrays, self.size, self.kind = arrays, int(size), kind
        self.device = torch.device(device)
        self.budget_bytes = max(int(budget_bytes), 0)
        self._lru: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # the GUI's preview may index while the training thread does
        self.bytes = self.peak_bytes = self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.arrays)

    @property
    def shape(self) -> tuple[int, ...]:
        s = self.size
        return (len(self), 1, s, s) if self.kind == "image" else (len(self), s, s)

    def _indices(self, ix: Any) -> tuple[list[int], bool]:
        if isinstance(ix, slice):
            return list(range(len(self))[ix]), False
        if isinstance(ix, (int, np.integer)) or (isinstance(ix, torch.Tensor) and ix.ndim == 0):
            return [int(ix)], True
        if isinstance(ix, torch.Tensor):
            ix = ix.tolist()
        n = len(self)
        out = []
        for i in np.asarray(ix, dtype=np.int64).ravel().tolist():
            if not -n <= i < n:
                raise IndexError(f"slice {i} is out of range for {n} slices")
            out.append(i % n)
        return out, False

    def __getitem__(self, ix: Any) -> torch.Tensor:
        idx, single = self._indices(ix)
        s = self.size
        if idx:
            out = torch.stack([self._get(i) for i in idx])
        else:
            out = torch.zeros((0, 1, s, s) if self.kind == "image" else (0, s, s), dtype=self._dtype())
        if self.kind == "label":
            out = out.to(torch.int64)
        out = out.to(self.device)
        return out[0] if single else out

    def _dtype(self) -> torch.dtype:
        return torch.float32 if self.kind == "image" else torch.int8

    def _get(self, i: int) -> torch.Tensor:
        with self._lock:
            hit = self._lru.get(i)
            if hit is not None:
                self._lru.move_to_end(i)
                self.hits += 1
                return hit
            self.misses += 1
            t = self._load(i)
            if t is None:  # a slice without a label
                return torch.full((self.size, self.size), -1, dtype=torch.int8)
            nbytes = t.numel() * t.element_size()
            if nbytes <= self.budget_bytes:
                while self._lru and self.bytes + nbytes > self.budget_bytes:
                    _, old = self._lru.popitem(last=False)
                    self.bytes -= old.numel() * old.element_size()
                self._lru[i] = t
                self.bytes += nbytes
                self.peak_bytes = max(self.peak_bytes, self.bytes)
            return t

    def _load(self, i: int) -> torch.Tensor | None:
        # the same resampling functions as SliceSet.to_tensors, so both paths give identical values
        arr = self.arrays[i]
        if self.kind == "image":
            return resize_images([arr], self.size)[0]
        if arr is None:
            return None
        return resize_label_list([arr], self.size)[0].to(torch.int8)  # classes <= 63 (config), and -1

    def to(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Every slice as one tensor (reads them all: for small data only; tensor-like for ``predict()``)."""
        return self[list(range(len(self)))].to(device or self.device)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._lru), "bytes": self.bytes, "peak_bytes": self.peak_bytes,
                    "budget_bytes": self.budget_bytes, "hits": self.hits, "misses": self.misses}


def stacked_bytes(n: int, size: int) -> int:
    """Memory of the eager path: float32 images (N,1,S,S) plus int64 labels (N,S,S)."""
    return n * size * size * (4 + 8)


def training_slices(data: SliceSet, size: int, device: torch.device, budget_mb: float
                    ) -> tuple[torch.Tensor | SliceStore, torch.Tensor | SliceStore, torch.Tensor]:
    """``(images, labels, labeled)`` for the engine: stacked tensors on ``device`` when they fit
    ``budget_mb`` and the data is in memory; otherwise two :class:`SliceStore` sharing the budget."""
    if not data.is_lazy and stacked_bytes(len(data), size) <= budget_mb * MB:
        images, labels, labeled = data.to_tensors(size)
        return images.to(device), labels.to(device), labeled
    labeled = torch.zeros(len(data), dtype=torch.bool)
    labeled[data.labeled_indices()] = True
    budget = int(budget_mb * MB)
    images = SliceStore(data.images, size, device, int(budget * IMAGE_SHARE), kind="image")
    labels = SliceStore(data.labels, size, device, budget - images.budget_bytes, kind="label")
    return images, labels, labeled
