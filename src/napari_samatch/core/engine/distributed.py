"""Training on several processes with PyTorch's own distributed engine (``torchrun``).

``torchrun --nproc_per_node N`` starts N copies of the same program and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address in each one's environment. :func:`init_from_env` turns that
into a process group (NCCL for CUDA tensors, gloo for CPU tensors); the engine then wraps the Match
model in ``DistributedDataParallel`` and uses the helpers here for everything else. Without those
variables (or with ``WORLD_SIZE=1``) nothing is initialised and every helper is a no-op, so the
single-process engine, the CLI and the plugin behave exactly as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """What torchrun told this process about itself."""

    rank: int
    world_size: int
    local_rank: int


def env() -> DistEnv | None:
    """The torchrun variables of this process, or None when it runs alone."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be whole numbers ({exc}).") from exc
    return DistEnv(rank, world, local) if world > 1 else None


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or a lone process): the one that prints, writes checkpoints and exports."""
    return rank() == 0


def init_from_env(timeout_min: float = 30.0) -> DistEnv | None:
    """Join the process group torchrun describes; returns None (and does nothing) when run alone.

    The backend string routes CPU tensors to gloo and CUDA tensors to NCCL, so the same group serves
    a GPU run (DDP on CUDA) and the small CPU-side collectives (gathered RNG states, log values).
    """
    info = env()
    if info is None or active():
        return info
    if torch.cuda.is_available():
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"Local rank {info.local_rank} has no GPU: this node has "
                              f"{torch.cuda.device_count()}. Start at most that many processes per node.")
        torch.cuda.set_device(info.local_rank)  # before NCCL starts: one GPU per process
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    return info


def cleanup() -> None:
    """Leave the process group (at the end of ``train``); harmless when none was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """One GPU per process: plain 'cuda' becomes this process's own GPU (``LOCAL_RANK``)."""
    if active() and device.type == "cuda" and device.index is None:
        info = env()
        return torch.device("cuda", info.local_rank if info else torch.cuda.current_device())
    return device


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when in a group, else ``module`` itself.

    DDP broadcasts rank 0's parameters and buffers here, so every rank starts from the same model
    even if their seeds differed. Every parameter of the UNet takes part in every forward, so
    ``find_unused_parameters`` (an extra graph traversal per step) is not needed.
    """
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, output_device=device.index if ids else None)


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``tensors`` (parameters, buffers) to every rank, in place."""
    if not active():
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP syncs buffers from rank 0 at the start of each forward, so after the last step each rank
    still holds its own last update; this makes all ranks equal to what rank 0 saves.
    """
    broadcast_tensors(module.buffers(), src)


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Average ``.grad`` over ranks in one all-reduce (for SAM, which DDP cannot wrap: it is driven
    through ``encode``/``decode``, not ``forward``).

    A parameter without a gradient on every rank keeps None, as it would alone, so AdamW still skips
    it; one with a gradient on some ranks only gets the mean with zeros from the others, as DDP does.
    """
    if not active():
        return
    params = [p for p in params]
    if not params:
        return
    ref = params[0]
    flat = [p.grad.detach().reshape(-1).float() if p.grad is not None
            else torch.zeros(p.numel(), device=ref.device) for p in params]
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=ref.device)
    buffer = torch.cat(flat + [present])
    dist.all_reduce(buffer)
    buffer /= dist.get_world_size()
    sums, seen = buffer[: -len(params)], buffer[-len(params):]
    offset = 0
    for p, s in zip(params, seen.tolist()):
        n = p.numel()
        if s > 0:
            p.grad = sums[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def mean_logs(logs: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks that report it (keys may differ: e.g. a SAM loss that one
    rank's batch had no prompt for)."""
    if not active():
        return logs
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, logs)
    keys = list(dict.fromkeys(k for g in gathered for k in g))
    return {k: sum(float(g[k]) for g in gathered if k in g) / sum(k in g for g in gathered) for k in keys}


def gather(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order, on every rank ([obj] when alone)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_generator(seed: int) -> torch.Generator | None:
    """Under torchrun: reseed torch's global RNG (dropout) and return a generator, both distinct per
    rank, so ranks augment their shares differently. Call it after building the models, whose init then
    stays identical on all ranks. None when alone: the engine keeps its single stream unchanged."""
    if not active():
        return None
    seed = seed + 1_000_003 * (rank() + 1)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def gather_rng(gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """Every rank's own random streams (a collective), for a checkpoint that resumes exactly."""
    return gather({"gen": gen.get_state(), "torch": torch.get_rng_state()})


def restore_rng(streams: list[dict[str, torch.Tensor]] | None, gen: torch.Generator, seed: int) -> torch.Generator:
    """This rank's streams from a checkpoint; fresh ones when it was saved by another number of ranks."""
    if streams and len(streams) == world_size():
        gen.set_state(streams[rank()]["gen"])
        torch.set_rng_state(streams[rank()]["torch"])
        return gen
    return rank_generator(seed) or gen


def shard(batch: torch.Tensor, part: int | None = None, parts: int | None = None) -> torch.Tensor:
    """This rank's contiguous share of a batch drawn for all ranks together."""
    part = rank() if part is None else part
    parts = world_size() if parts is None else parts
    per = batch.shape[0] // parts
    return batch[part * per:(part + 1) * per]


def strided(pool: torch.Tensor | Sequence[int]) -> torch.Tensor | Sequence[int]:
    """Rank r's part of a pool: every world_size-th element starting at r (the whole pool when alone,
    or when the pool is too small to give every rank one)."""
    n = world_size()
    return pool if n == 1 or len(pool) < n else pool[rank()::n]
