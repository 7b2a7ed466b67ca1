"""What an engine checkpoint holds, and how a resume puts it back.

A checkpoint is one dict (written by :mod:`.checkpoint`): the config, both models and their optimisers,
the stage position, the validation history and best weights, and every random stream, so a resumed run
draws the same batches as an uninterrupted one. Kept apart from the engine, which only trains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from . import distributed
from ..checkpoint import check_state_fits
from ..errors import CheckpointError

if TYPE_CHECKING:  # the engine imports this module
    from .engine import Engine

FIX = "Was it made with other classes or another SAM backend?"


def state_payload(engine: "Engine") -> dict[str, Any]:
    """The engine's whole resumable state. Under torchrun a collective: every rank must call it."""
    payload: dict[str, Any] = {
        "config": engine.config.to_dict(), "unet": engine.unet.state_dict(),
        "opt_unet": engine.opt_unet.state_dict(), "stage_index": engine.stage_index,
        "stage_iter": engine.stage_iter, "history": engine.history, "best": engine.best,
        "gen_state": engine.gen.get_state(), "torch_rng": torch.get_rng_state(),
    }
    if engine._best_state is not None:
        payload["unet_best"] = engine._best_state
    if engine._sam is not None:  # SAM only when it was loaded: a UniMatch run never pays for it
        payload["sam"] = engine._sam.state_dict()
        payload["sam_fingerprint"] = engine._sam.fingerprint()
        if engine.opt_sam is not None:
            payload["opt_sam"] = engine.opt_sam.state_dict()
    if distributed.active():  # every rank's own random streams, for an exact resume
        payload["rank_rng"] = distributed.gather_rng(engine.rank_gen)
    return payload


def load_state(engine: "Engine", payload: dict[str, Any]) -> None:
    """Put a :func:`state_payload` back into ``engine``; a CheckpointError says what does not fit."""
    check_state_fits(engine.unet, payload.get("unet"), "The checkpoint", "Match model", FIX)
    try:
        engine.opt_unet.load_state_dict(payload["opt_unet"])
        if "sam" in payload:
            engine.sam.load_state_dict(payload["sam"])
            if "opt_sam" in payload:
                engine._sam_optimizer().load_state_dict(payload["opt_sam"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"The checkpoint does not fit these models ({str(exc)[:200]}). {FIX}") from exc
    engine.stage_index, engine.stage_iter = int(payload["stage_index"]), int(payload["stage_iter"])
    engine.history = list(payload.get("history", []))
    engine.best = dict(payload.get("best", engine.best))
    engine._best_state = payload.get("unet_best")
    engine.gen.set_state(payload["gen_state"])
    torch.set_rng_state(payload["torch_rng"])
    if distributed.active():
        engine.rank_gen = distributed.restore_rng(payload.get("rank_rng"), engine.rank_gen, engine.config.seed)
