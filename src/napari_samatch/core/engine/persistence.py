"""What an engine checkpoint holds, and how a resume puts it back.

A checkpoint is one dict (written by :mod:`..checkpoint`): the config, both models and their optimisers,
the stage position, the validation history and best weights, and every random stream, so a resumed run
draws the same batches as an uninterrupted one. Kept apart from the engine, which only trains.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..checkpoint import check_state_fits
from ..config import RunConfig
from ..errors import CheckpointError
from ..match.averaging import WeightAverage
from ..sam.base import SamBackend
from . import distributed

FIX = "Was it made with other classes or another SAM backend?"


class Resumable(Protocol):
    """What a checkpoint holds of the engine (the engine imports this module, not the reverse)."""

    config: RunConfig
    unet: torch.nn.Module
    opt_unet: torch.optim.Optimizer
    opt_sam: torch.optim.Optimizer | None
    stage_index: int
    stage_iter: int
    history: list[dict[str, Any]]
    best: dict[str, Any]
    best_state: dict[str, torch.Tensor] | None
    average: WeightAverage | None
    gen: torch.Generator
    rank_gen: torch.Generator

    @property
    def sam(self) -> SamBackend: ...

    @property
    def loaded_sam(self) -> SamBackend | None: ...

    def sam_optimizer(self) -> torch.optim.Optimizer: ...


def state_payload(engine: Resumable) -> dict[str, Any]:
    """The engine's whole resumable state. Under torchrun a collective: every rank must call it."""
    payload: dict[str, Any] = {
        "config": engine.config.to_dict(), "unet": engine.unet.state_dict(),
        "opt_unet": engine.opt_unet.state_dict(), "stage_index": engine.stage_index,
        "stage_iter": engine.stage_iter, "history": engine.history, "best": engine.best,
        "gen_state": engine.gen.get_state(), "torch_rng": torch.get_rng_state(),
    }
    if engine.best_state is not None:
        payload["unet_best"] = engine.best_state
    if engine.average is not None:  # stopped inside the joint stage: its mean so far
        payload["joint_average"] = engine.average.state()
    if engine.loaded_sam is not None:  # SAM only when it was loaded: a UniMatch run never pays for it
        payload["sam"] = engine.loaded_sam.state_dict()
        if engine.opt_sam is not None:
            payload["opt_sam"] = engine.opt_sam.state_dict()
    if distributed.active():  # every rank's own random streams, for an exact resume
        payload["rank_rng"] = distributed.gather_rng(engine.rank_gen)
    return payload


def load_state(engine: Resumable, payload: dict[str, Any]) -> None:
    """Put a :func:`state_payload` back into ``engine``; a CheckpointError says what does not fit."""
    check_state_fits(engine.unet, payload.get("unet"), "The checkpoint", "Match model", FIX)
    try:
        engine.opt_unet.load_state_dict(payload["opt_unet"])
        if "sam" in payload:
            engine.sam.load_state_dict(payload["sam"])
            if "opt_sam" in payload:
                engine.sam_optimizer().load_state_dict(payload["opt_sam"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"The checkpoint does not fit these models ({str(exc)[:200]}). {FIX}") from exc
    engine.stage_index, engine.stage_iter = int(payload["stage_index"]), int(payload["stage_iter"])
    engine.history = list(payload.get("history", []))
    engine.best = dict(payload.get("best", engine.best))
    engine.best_state = payload.get("unet_best")
    engine.average = WeightAverage.from_state(payload["joint_average"]) if "joint_average" in payload else None
    engine.gen.set_state(payload["gen_state"])
    torch.set_rng_state(payload["torch_rng"])
    if distributed.active():
        engine.rank_gen = distributed.restore_rng(payload.get("rank_rng"), engine.rank_gen, engine.config.seed)
