"""The SAM-Match engine: stages, events, pause/resume/stop, checkpoints.

A run is a list of stages over one :class:`SliceSet`:

1. ``warmup``  the Match model alone (supervised, or UniMatch on labeled + unlabeled slices);
2. ``sam``     SAM fine-tuning on labeled slices with ground-truth boxes;
3. ``joint``   the chosen method: supervised, UniMatch, or SAM-Match (both models train together).

Each stage is optional (0 iterations). The engine owns the models, the optimisers and the embedding
cache; it never draws anything. Between steps it checks the pause/stop flags, so a stop is honoured
within one step and always leaves a checkpoint. ``run`` may be called again after the user labeled
more slices: that is a new *round*, continuing from the current models.

Under ``torchrun`` (see :mod:`.distributed`) every rank runs this same loop: the Match model is wrapped
in DistributedDataParallel, each rank trains on its own share of a global batch of
``world_size x batch_labeled`` labeled and ``world_size x batch_unlabeled`` unlabeled slices, SAM's
gradients are averaged over ranks, and only rank 0 validates, emits events and writes checkpoints.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import RunConfig, from_dict
from ..data.slices import SliceSet
from ..data.store import training_slices
from ..device import autocast, conv_memory_format, select_device, set_threads, to_device, tune_cpu_allocator
from ..errors import CheckpointError, DataError
from ..match.averaging import WeightAverage
from ..match.inference import predict_probs
from ..match.unet import UNet
from ..prior.prior import NativePrior, one_painted_slice_note, slice_prior
from ..sam.refiner import Refiner
from . import distributed, faults, loop, persistence, review
from . import events as ev
from .steps import read_logs, samatch_pseudo, supervised_step, unimatch_step
from .validation import Validator

log = logging.getLogger(__name__)
STAGES = ("warmup", "sam", "joint")


class Engine:
    """Trains the Match model and SAM together on a set of slices, some of them labeled."""

    def __init__(self, data: SliceSet, config: RunConfig, val: SliceSet | None = None, sam=None) -> None:
        config.validate()
        if data.num_classes != config.num_classes:
            config = config.replace(num_classes=data.num_classes, class_names=list(data.class_names))
        self.config = config
        self.data = data.validate()  # a clear DataError here, not an IndexError deep in a loss
        set_threads(config.threads)
        self.device = distributed.local_device(select_device(config.device))
        if self.device.type == "cpu":
            tune_cpu_allocator()
        torch.manual_seed(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.unet = UNet(1, config.num_classes).to(self.device, memory_format=conv_memory_format(self.device))
        # rank_gen: augmentation and unlabeled sampling, one stream per rank (``gen`` itself when alone);
        # ``gen`` draws the labeled global batch, identically on every rank.
        self.rank_gen = distributed.rank_generator(config.seed) or self.gen
        self.train_unet = distributed.wrap_ddp(self.unet, self.device)  # the UNet itself when alone
        self._sam = sam
        self._refiner: Refiner | None = None
        if config.optimizer == "adamw":
            self.opt_unet = torch.optim.AdamW(self.unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        else:
            self.opt_unet = torch.optim.SGD(self.unet.parameters(), lr=config.lr, momentum=config.momentum,
                                            weight_decay=config.weight_decay)
        self.opt_sam: torch.optim.Optimizer | None = None
        self.stage_index = self.stage_iter = 0
        self.average: WeightAverage | None = None  # the joint stage's mean Match weights, while it runs
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"score": -1.0, "iteration": 0}
        self.best_state: dict[str, torch.Tensor] | None = None  # validation-best Match weights
        self._pause, self._stop = threading.Event(), threading.Event()
        self.lock = threading.RLock()  # guards the models against the GUI's refine calls
        self._preview_request: tuple[list[int], bool] | None = None
        self.notes: list[str] = []  # warnings about the data, emitted when the run starts
        self._load_tensors()
        self.validator = Validator(self, val) if val is not None and distributed.is_main() else None

    # ----------------------------------------------------------------- data
    def _load_tensors(self) -> None:
        # stacked tensors, or SliceStores reading on demand when the data is lazy or over data_budget_mb
        self.images, self.labels, labeled = training_slices(self.data, self.config.size, self.device,
                                                            self.config.data_budget_mb)
        self.labeled_idx = torch.nonzero(labeled).flatten()
        self.unlabeled_idx = torch.nonzero(~labeled).flatten()
        if len(self.labeled_idx) == 0:
            raise DataError("No slice is labeled. Paint at least one slice (any non-zero label) before training.")
        c = self.config
        note = one_painted_slice_note(self.data.groups, labeled.tolist())
        if note and note not in self.notes:  # _load_tensors runs again for each round
            self.notes.append(note)
        self.sam_images = self.images
        if c.sam_size and c.sam_size != c.size:
            self.sam_images = training_slices(self.data, c.sam_size, self.device, c.data_budget_mb)[0]
        if self._refiner is not None:
            self._refiner.sam_images = self.sam_images
        # The painted slices' prior (core/prior); not for data read on demand (a cohort larger than memory)
        self.prior = self.native_prior = None
        if c.prior_weight > 0 and isinstance(self.labels, torch.Tensor):
            self.prior = slice_prior(self.labels, self.data.groups, self.data.positions, c.num_classes)
            self.native_prior = NativePrior(self.data, c.num_classes, c.size)  # the answer's, made on demand
        semi = c.method != "supervised" or (c.warmup_iters > 0 and c.warmup_method != "supervised")
        if len(self.unlabeled_idx) == 0 and semi:
            # what runs is what the config (and so metrics.json and the checkpoint) says
            method = c.method if c.method != "supervised" else c.warmup_method
            self.config = c.replace(method="supervised", warmup_method="supervised")
            self.notes.append(f"Every slice is labeled, so {method} has no unlabeled slice to learn from: this run "
                              "trains supervised, and its settings say so (add unlabeled slices for semi-supervised "
                              "training).")

    def set_data(self, data: SliceSet) -> None:
        """Start a new round on a grown labeled set, keeping models and the embedding cache."""
        if data.num_classes != self.config.num_classes:
            raise DataError(f"The new data has {data.num_classes} classes, the models {self.config.num_classes}. "
                            "Keep the class list when adding labeled slices.")
        if len(data) != len(self.data):
            # slice keys index the cache; a different slice list makes them meaningless
            if self._refiner is not None:
                self._refiner.cache.invalidate()
        self.data = data.validate()
        self._load_tensors()
        self.stage_index, self.stage_iter = 0, 0
        if self._refiner is not None:
            self._refiner.trusted = None  # judged again on the grown labeled set

    def next_round(self, data: SliceSet, schedule: RunConfig, val: SliceSet | None = None) -> None:
        """A new round from the current models on a grown labeled set (the user accepted or painted more
        slices): the stage lengths, checkpointing and method of ``schedule``, the rest of the run kept."""
        keep = ("warmup_iters", "sam_iters", "joint_iters", "eval_every", "checkpoint_every", "method")
        self.config = self.config.replace(**{k: getattr(schedule, k) for k in keep})
        self.set_data(data)
        self.validator = Validator(self, val) if val is not None and distributed.is_main() else None

    # ----------------------------------------------------------------- models
    @property
    def sam(self):
        if self._sam is None:
            from ..sam import load_sam
            c = self.config
            self._sam = load_sam(c.sam_backend, c.sam_checkpoint, device=str(self.device), model_type=c.sam_model_type)
        return self._sam

    @property
    def loaded_sam(self):
        """SAM when it was loaded (or given), else None; unlike :attr:`sam` this never loads it."""
        return self._sam

    @property
    def refiner(self) -> Refiner:
        if self._refiner is None:
            self.sam.to(self.device)
            self.sam.freeze_for(self.config.sam_mode)
            self._refiner = Refiner(self.sam, self.config, self.device)
            self._refiner.sam_images = self.sam_images
        return self._refiner

    def labeled_spread(self) -> torch.Tensor:
        """Up to ``calibrate_slices`` labeled slices, evenly spread: what the checks on painted slices see."""
        lab = self.labeled_idx
        return lab[torch.linspace(0, len(lab) - 1, min(len(lab), self.config.calibrate_slices)).round().long()]

    def calibrate_sam(self) -> str:
        """Measure which classes SAM may refine (``Refiner.calibrate`` on up to ``calibrate_slices``
        labeled slices, evenly spread); returns a line saying so. A no-op when ``sam_trust_dice`` is 0."""
        c = self.config
        if c.sam_trust_dice <= 0:
            return ""
        pick = self.labeled_spread()
        with self.lock, torch.no_grad():
            self.sam.eval()
            dice = self.refiner.calibrate(pick.tolist(), self.images[pick], self.labels[pick])
        names = c.class_names
        sam = [f"{names[k]} {d:.2f}" for k, d in dice.items() if k in self.refiner.trusted]
        kept = [f"{names[k]} {d:.2f} (" + ("a ring: a box cannot outline it" if k in self.refiner.rings
                                           else f"below {c.sam_trust_dice:g}") + ")"
                for k, d in dice.items() if k not in self.refiner.trusted]
        return (f"SAM's Dice from ground-truth boxes on {len(pick)} labeled slices: SAM refines "
                f"{', '.join(sam) or 'no class'}" + (f"; the Match model keeps {', '.join(kept)}" if kept else ""))

    def sam_optimizer(self) -> torch.optim.Optimizer:
        """SAM's optimiser, made on first use (a run without SAM never builds one)."""
        if self.opt_sam is None:
            params = [p for p in self.sam.trainable_parameters(self.config.sam_mode) if p.requires_grad]
            self.opt_sam = torch.optim.AdamW(params, lr=self.config.sam_lr, weight_decay=1e-4)
            distributed.broadcast_tensors(params)  # every rank starts SAM from rank 0's weights
        return self.opt_sam

    def uses_sam(self) -> bool:
        """True when this run's settings train or use SAM."""
        return self.config.sam_iters > 0 or (self.config.method == "samatch" and self.config.joint_iters > 0)

    # ----------------------------------------------------------------- control
    def pause(self) -> None:
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    def stop(self) -> None:
        self._stop.set()
        self._pause.clear()

    def clear_stop(self) -> None:
        """Forget an earlier Stop: a new ``run`` (the next round) starts."""
        self._stop.clear()

    @property
    def paused(self) -> bool:
        return self._pause.is_set()

    def request_preview(self, indices: Sequence[int], native: bool = False) -> None:
        """Ask for prompts and pseudo-labels of these slices; they arrive as a PSEUDO_LABELS event."""
        self._preview_request = (list(indices), native)

    def between_steps(self, emit, stage: str) -> None:
        """Between steps (called by the loop): honour stop, pause and preview requests."""
        if self._preview_request is not None and stage == "joint":
            (indices, native), self._preview_request = self._preview_request, None
            emit(ev.PSEUDO_LABELS, data=self.preview(indices, native))
        if self._stop.is_set():
            raise loop.StopRequested
        if self._pause.is_set():
            emit(ev.PAUSED, message="Paused")
            while self._pause.is_set() and not self._stop.is_set():
                time.sleep(0.05)
            if self._stop.is_set():
                raise loop.StopRequested
            emit(ev.RESUMED, message="Resumed")

    # ----------------------------------------------------------------- the loop
    def stages(self) -> list[tuple[str, int]]:
        c = self.config
        return [("warmup", c.warmup_iters), ("sam", c.sam_iters), ("joint", c.joint_iters)]

    def run(self, on_event: ev.EventCallback | None = None, checkpoint_dir: str | Path | None = None) -> dict:
        """Run (or continue) all stages; returns a summary. Events go to ``on_event`` (see core/engine/loop.py)."""
        return loop.run(self, on_event, checkpoint_dir)

    def _sample(self, pool: torch.Tensor, k: int, gen: torch.Generator | None = None) -> torch.Tensor:
        pick = torch.randint(len(pool), (k,), generator=gen or self.gen)
        return pool[to_device(pick, pool.device)]

    def _sam_params(self) -> list[torch.Tensor]:
        return [p for g in self.opt_sam.param_groups for p in g["params"]] if self.opt_sam else []

    def step(self, stage: str) -> dict[str, float]:
        """One optimisation step of the given stage; returns the losses as floats."""
        c = self.config
        amp = autocast(self.device, c.amp)
        # Labeled: every rank draws the same global batch and keeps its share, so N ranks see exactly
        # the slices one process would with an N times larger batch. Unlabeled (the many slices SAM
        # encodes): each rank draws from its own strided part, so its embedding cache holds ~1/N of them.
        ix = distributed.shard(self._sample(self.labeled_idx, c.batch_labeled * distributed.world_size()))
        x, y = self.images[ix], self.labels[ix]
        method = c.warmup_method if stage == "warmup" else c.method
        if stage == "sam":
            self.sam.train()
            self.opt_sam.zero_grad(set_to_none=True)
            loss = self.refiner.learn_labeled(ix.tolist(), x, y, generator=self.rank_gen)  # backpropagated
            distributed.average_gradients(self._sam_params())
            self.opt_sam.step()
            return read_logs({"loss": loss, "loss_sam_x": loss})

        self.train_unet.train()
        if method == "supervised" or len(self.unlabeled_idx) == 0:
            loss, logs = supervised_step(self.train_unet, x, y, self.rank_gen, amp)
            self.opt_unet.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_unet.step()
            return read_logs(logs)

        iu = self._sample(distributed.strided(self.unlabeled_idx), c.batch_unlabeled, self.rank_gen)
        u = self.images[iu]
        if method == "unimatch":
            loss, logs = unimatch_step(self.train_unet, x, y, u, self.rank_gen, c.conf_thresh, amp=amp)
            self.opt_unet.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_unet.step()
            return read_logs(logs)

        # SAM-Match: SAM refines the pseudo-labels and keeps learning (labeled GT boxes + unlabeled).
        train_sam = c.sam_every > 0 and self.stage_iter % c.sam_every == 0
        if not self.refiner.trains_encoder:  # encode new slices before the UNet's graph exists: peaks don't add
            self.refiner.embeddings(iu.tolist(), u)
        self.sam.train(train_sam)
        if train_sam:  # SAM's losses are backpropagated as they are computed (Refiner.learn)
            self.opt_sam.zero_grad(set_to_none=True)
        pseudo = samatch_pseudo(self.refiner, iu.tolist(), u, train_sam=train_sam, sam_weight=c.sam_unlabeled_weight,
                                prior=self.prior_of(iu), generator=self.rank_gen)
        loss, logs = unimatch_step(self.train_unet, x, y, u, self.rank_gen, c.conf_thresh, pseudo_fn=pseudo,
                                   amp=amp)
        self.opt_unet.zero_grad(set_to_none=True)
        loss.backward()  # the Match model's one backward: DDP all-reduces its gradients here
        self.opt_unet.step()
        if train_sam:  # after the Match model's backward, so that its graph and SAM's are never alive together
            logs["loss_sam_x"] = self.refiner.learn_labeled(ix.tolist(), x, y, generator=self.rank_gen)
            distributed.average_gradients(self._sam_params())
            self.opt_sam.step()
        return read_logs(logs)

    # ----------------------------------------------------------------- results
    def track_best(self, metrics: dict) -> None:
        score = metrics.get("val_mean_dice")
        if score is not None and score > self.best["score"]:
            self.best = {"score": float(score), "iteration": metrics["global_iteration"], "stage": metrics["stage"]}
            self.best_state = {k: v.detach().clone() for k, v in self.unet.state_dict().items()}

    def use_best(self) -> None:
        """Load the validation-best Match weights (model selection on validation only)."""
        if self.best_state is not None:
            self.unet.load_state_dict(self.best_state)

    def summary(self, time_s: float = 0.0, stopped: bool = False) -> dict:
        return {"stopped": stopped, "train_time_s": time_s, "stage_index": self.stage_index,
                "stage_iter": self.stage_iter, "best": dict(self.best),
                "last_metrics": self.history[-1] if self.history else {}}

    @torch.no_grad()
    def predict(self, indices: Sequence[int] | None = None, images: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax probabilities (N,C,S,S) of the Match model for slices (by index) or given images."""
        with self.lock:
            if images is None:
                images = self.images if indices is None else self.images[list(indices)]
            return predict_probs(self.unet, images.to(self.device), amp=autocast(self.device, self.config.amp))

    def prior_of(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """The prior's labels and confidence of some slices, with its weight; None without a prior."""
        if self.prior is None:
            return None
        ix = torch.as_tensor(indices, dtype=torch.long, device=self.prior[0].device)
        return self.prior[0][ix], self.prior[1][ix], self.config.prior_weight

    def prior_preview(self, indices: Sequence[int], native: bool = False) -> dict[str, Any] | None:
        """The prior alone as a preview: the first result a user sees (see core/engine/review.py)."""
        return review.prior_preview(self, indices, native)

    def preview(self, indices: Sequence[int], native: bool = False) -> dict[str, Any]:
        """What the Review dock shows for some slices; ``native``: at their own size (core/engine/review.py)."""
        return review.preview(self, indices, native)

    def refine_with_prompts(self, index: int, prompts, native: bool = False) -> dict[str, np.ndarray]:
        """Re-run SAM on one slice with user-edited prompts (see core/engine/review.py)."""
        return review.refine_with_prompts(self, index, prompts, native)

    # ----------------------------------------------------------------- persistence
    def state_payload(self) -> dict[str, Any]:
        """Everything a resume needs (models, optimisers, position, random streams); see core/engine/persistence.py."""
        return persistence.state_payload(self)

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint. Under torchrun every rank must call this (it gathers the ranks' random
        streams); only rank 0 writes."""
        path = Path(path)
        with self.lock:
            payload = self.state_payload()
            if distributed.is_main():
                save_checkpoint(path, payload)
        return path

    def load_state(self, payload: dict[str, Any]) -> None:
        """Restore what :meth:`state_payload` saved; a CheckpointError says what does not fit."""
        persistence.load_state(self, payload)

    @classmethod
    def from_checkpoint(cls, path: str | Path, data: SliceSet, val: SliceSet | None = None,
                        **overrides: Any) -> "Engine":
        """Resume a run: the same config (plus overrides such as device), models, optimisers and position.

        ``path`` is a ``last.pt`` or the run folder holding it; an exported ``model.pt`` cannot resume.
        """
        from .export import run_file

        path = run_file(path, "last.pt", "to resume (last.pt)")
        payload = load_checkpoint(path)
        if payload.get("kind") == "model":
            last = Path(path).parent / "last.pt"
            hint = f"resume from {last}" if last.is_file() else "resume from the run's last.pt"
            raise CheckpointError(f"{path} is an exported model (weights only), not a training checkpoint; "
                                  f"{hint}, which keeps the optimiser and the position of the run.")
        config = from_dict({**payload["config"], **overrides})
        if "device" not in overrides:  # an explicit device wins; a saved "cuda" on a CPU-only machine is a sentence
            faults.check_resume_device(config)
        engine = cls(data, config, val=val)
        engine.load_state(payload)
        return engine
