"""Run settings: one dataclass, named presets, strict validation.

A config file (JSON or TOML) holds the same keys as :class:`RunConfig`; unknown keys and values out of
range raise :class:`ConfigError` naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

METHODS = ("supervised", "unimatch", "samatch")
SAM_MODES = ("decoder", "full")
DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_CLASSES = 64  # background included


@dataclass
class RunConfig:
    """Everything that decides what one training run does.

    Stages run in order: ``warmup_iters`` of the Match model (supervised or UniMatch, see
    ``warmup_method``), ``sam_iters`` of SAM fine-tuning on labeled slices with ground-truth boxes,
    then ``joint_iters`` of the chosen ``method``. A stage with 0 iterations is skipped.
    """

    method: str = "samatch"
    warmup_method: str = "unimatch"
    warmup_iters: int = 200
    sam_iters: int = 100
    joint_iters: int = 300
    # After the warm-up, a class the Match model still misses on the painted slices themselves (Dice below
    # this) gets the warm-up again, half as long with a fresh learning-rate decay, at most twice; 0 = off.
    # On ACDC at k = 5 the small RV was unlearned after 200 steps on 3 of 11 volumes checked (Dice 0.00-0.17
    # on its own painted slices, 0.76-0.95 on the others), and SAM was then never prompted for it
    # (docs/benchmarks.md, "k = 5 and the warm-up refit").
    warmup_fit_dice: float = 0.0
    # Every this many joint steps, the Match model's Dice on the painted slices is checked and its weights kept
    # while it fits every class it fit (warmup_fit_dice) when the joint stage began; one that SAM does not refine
    # and is lost at the stage's end (Dice below 0.2) sends it back to those weights (core/engine/painted_fit.py).
    # 0 = off, as is warmup_fit_dice 0.
    joint_fit_every: int = 0
    size: int = 256
    batch_labeled: int = 4
    batch_unlabeled: int = 4
    # SGD with momentum, as the paper; "adamw" (lr ~1e-3) is offered too, but learned less on a 150-step ACDC run
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    # AdamW on SAM. On ACDC 1e-5 kept SAM's exact-box Dice over its first 30 steps where 1e-4 lost it, but
    # the phantom demo ended worse with it (docs/benchmarks.md, "Fine-tuning SAM without losing it")
    sam_lr: float = 1e-4
    sam_mode: str = "decoder"
    # SAM sees the slices resized from the originals to this size (LiteMedSAM's input is 256), not the
    # training frame blown up; 0 = the training frame. Boxes and masks stay in the training frame.
    sam_size: int = 256
    sam_backend: str = "litemedsam"
    sam_checkpoint: str | None = None
    sam_model_type: str = "auto"
    sam_unlabeled_weight: float = 0.25
    # SAM trains on every k-th joint step (1 = every step, as the paper; 0 = never); other steps only
    # refine, without gradients: SAM's decoder backward dominates a joint step on a CPU
    sam_every: int = 1
    conf_thresh: float = 0.95
    # The Match model ends as the mean of its weights after each joint step (core/match/averaging.py), not the
    # last ones, unless only one slice is painted. Off in every preset: the paper keeps the last weights, and
    # on ACDC the mean helped at k = 2 and 5 only (see the quick preset's comment).
    joint_average: bool = False
    # Weight of the painted slices' prior (shape interpolation between them, core/prior) in SAM-Match's
    # pseudo-labels: (1 - w) Match + w prior, with w = prior_weight x the prior's confidence, which fades
    # with the distance to the nearest painted slice. 0 = the paper (the Match model's prediction alone).
    prior_weight: float = 1.0
    # 0 = prompts from the Match model's argmax, as the paper. A higher threshold starves an early,
    # unconfident model of prompts (measured on the phantom: 0.7 left RV and LV without any box).
    prompt_thresh: float = 0.0
    bbox_shift: int = 5
    components: str = "largest"
    # boxes only by default: points made the masks worse with both ground-truth and predicted boxes
    # (docs/benchmarks.md, "What SAM's refinement needs")
    points: int = 0
    negative_points: int = 0
    nested_fusion: bool = True
    # SAM trains toward hole-filled masks (the myocardium's ring as the disk it bounds): see Refiner.targets.
    # Off: it measured better for SAM on ACDC but not for the Match model (same ACDC Dice, worse demo).
    sam_fill_targets: bool = False
    # SAM's training decodes (the loss's forward and backward) under bf16 autocast too, on CPUs with fast
    # bf16 only: the joint step 0.68-0.79x, SAM fine-tuned on ACDC to the same Dice (0.874 after 100 steps
    # both ways). Not on a GPU, where the step waits on the host (0.158 s against 0.148 s on an H200).
    # In `full` mode also the encoder's forward it learns from: the 1 + 1 step 3.70 s against 5.57, peak
    # 3.45 GiB against 4.58 (with the encoder channels-last; docs/benchmarks.md, "SAM's side of the step").
    sam_train_amp: bool = True
    # SAM's image encoder under the run's bf16 autocast where it only encodes (decoder mode: the cached
    # embeddings of every slice), on devices with fast bf16; in `full` mode its training forward follows
    # sam_train_amp instead.
    # Off: 0.72x the encode time on this project's CPU, but masks from ground-truth boxes on 205 ACDC slices
    # lost 0.010 LV Dice (docs/benchmarks.md, "The image encoder in bf16"); for very large volumes only.
    sam_encode_amp: bool = False
    # At most this many prompts with gradients in each of SAM's two losses per step, drawn at random
    # (0 = all): each costs its own backward pass (its activations no longer add up: Refiner.learn).
    sam_train_prompts: int = 0
    # SAM refines only the classes it segments from ground-truth boxes on the labeled slices with at
    # least this Dice (Refiner.calibrate); the others keep the Match model's label, and so does a class
    # that rings another on most labeled slices (a box cannot outline a ring). 0 = refine all.
    # Measured zero-shot (LiteMedSAM, nested fusion, 128 px): ACDC RV 0.92, Myo 0.71, LV 0.96; phantom
    # 0.95 / 0.88 / 0.97. With 0.8, ACDC's Myo stays the Match model's, which lifted zero-shot refined
    # pseudo-labels above the raw ones; but in training runs the Match model learned less with it (demo
    # final Dice 0.766 vs 0.907; docs/benchmarks.md, "Which classes SAM refines"), so it is off by default.
    sam_trust_dice: float = 0.0
    calibrate_slices: int = 16
    # multiply SAM's confidence by its own IoU prediction (off: LiteMedSAM's IoU head rarely exceeds 0.9,
    # which would push every pixel under the 0.95 loss threshold)
    iou_confidence: bool = False
    cache_budget_mb: float = 2048.0
    # training slices resized to size x size: stacked on the device up to this, read on demand beyond it
    # (core/data/store.py; a lazy SliceSet always reads on demand and caches up to this)
    data_budget_mb: float = 2048.0
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    threads: int = 0
    eval_every: int = 100
    checkpoint_every: int = 100
    checkpoint_dir: str | None = None
    num_classes: int = 4
    class_names: list[str] = field(default_factory=lambda: ["background", "RV", "Myo", "LV"])

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"Setting '{key}' = {getattr(self, key)!r} is invalid: {what}.")

        for f in dataclasses.fields(self):  # types first, so a range check never meets a string
            want = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(str(f.type))
            value = getattr(self, f.name)
            if want is not None and (not isinstance(value, want) or (want is not bool and isinstance(value, bool))):
                raise ConfigError(f"Setting '{f.name}' = {value!r} has the wrong type: use a {f.type}.")
        need(isinstance(self.class_names, list) and all(isinstance(n, str) for n in self.class_names),
             "class_names", "give a list of names, background first")
        need(self.method in METHODS, "method", f"choose one of {', '.join(METHODS)}")
        need(self.warmup_method in ("supervised", "unimatch"), "warmup_method", "choose supervised or unimatch")
        for key in ("warmup_iters", "sam_iters", "joint_iters"):
            need(isinstance(getattr(self, key), int) and getattr(self, key) >= 0, key, "use a whole number >= 0")
        need(isinstance(self.joint_fit_every, int) and self.joint_fit_every >= 0, "joint_fit_every",
             "use a whole number >= 0 (0 = no check)")
        need(0 <= self.warmup_fit_dice < 1, "warmup_fit_dice", "use a Dice in [0, 1) (0 = no extra warm-up)")
        need(isinstance(self.size, int) and self.size >= 32 and self.size % 16 == 0, "size",
             "use a multiple of 16, at least 32 (256 is the paper's)")
        need(1 <= self.batch_labeled <= 256, "batch_labeled", "use 1..256")
        need(1 <= self.batch_unlabeled <= 256, "batch_unlabeled", "use 1..256")
        need(0 < self.lr <= 1, "lr", "use a learning rate in (0, 1]")
        need(self.optimizer in ("sgd", "adamw"), "optimizer", "choose sgd or adamw")
        need(0 < self.sam_lr <= 1, "sam_lr", "use a learning rate in (0, 1]")
        need(0 <= self.momentum < 1, "momentum", "use a value in [0, 1)")
        need(0 <= self.weight_decay < 1, "weight_decay", "use a value in [0, 1)")
        need(self.sam_mode in SAM_MODES, "sam_mode", "choose decoder or full")
        need(self.sam_backend in ("litemedsam", "sam"), "sam_backend", "choose litemedsam or sam")
        need(isinstance(self.sam_every, int) and self.sam_every >= 0, "sam_every",
             "use a whole number >= 0 (0 = SAM only refines in the joint stage, it does not train)")
        need(isinstance(self.sam_train_prompts, int) and self.sam_train_prompts >= 0, "sam_train_prompts",
             "use a whole number >= 0 (0 = SAM learns from every prompt of a step)")
        need(0 <= self.sam_unlabeled_weight <= 10, "sam_unlabeled_weight", "use a value in [0, 10]")
        need(0 < self.conf_thresh < 1, "conf_thresh", "use a probability in (0, 1)")
        need(0 <= self.prior_weight <= 1, "prior_weight", "use a weight in [0, 1] (0 = no interpolation prior)")
        need(self.sam_size == 0 or (64 <= self.sam_size <= 1024 and self.sam_size % 16 == 0), "sam_size",
             "use 0 (the training frame) or a multiple of 16 in 64..1024 (LiteMedSAM's input is 256)")
        need(0 <= self.prompt_thresh < 1, "prompt_thresh", "use a probability in [0, 1) (0 = the argmax)")
        need(0 <= self.bbox_shift <= 64, "bbox_shift", "use 0..64 pixels")
        need(self.components in ("largest", "all"), "components", "choose largest or all")
        need(0 <= self.points <= 8, "points", "use 0..8 points per prompt")
        need(0 <= self.negative_points <= 8, "negative_points", "use 0..8 points per prompt")
        need(0 <= self.sam_trust_dice <= 1, "sam_trust_dice", "use a Dice in [0, 1] (0 = SAM refines every class)")
        need(1 <= self.calibrate_slices <= 1024, "calibrate_slices", "use 1..1024 labeled slices")
        need(self.cache_budget_mb >= 0, "cache_budget_mb", "use a size in MB >= 0")
        need(self.data_budget_mb >= 0, "data_budget_mb", "use a size in MB >= 0")
        need(self.device in DEVICES, "device", f"choose one of {', '.join(DEVICES)}")
        need(0 <= self.seed < 2**63, "seed", "use a whole number from 0 to 2**63 - 1")
        need(self.size <= 4096, "size", "use a frame of at most 4096 pixels (256 is the paper's)")
        need(0 <= self.threads <= 4096, "threads", "use 0 (all cores) or a positive count")
        need(self.eval_every >= 0, "eval_every", "use 0 (never) or a positive count")
        need(self.checkpoint_every >= 0, "checkpoint_every", "use 0 (only at the end) or a positive count")
        need(2 <= self.num_classes <= MAX_CLASSES, "num_classes", f"use 2..{MAX_CLASSES} classes, background included")
        need(len(self.class_names) == self.num_classes, "class_names",
             f"give one name per class ({self.num_classes} names, background first)")

    @property
    def total_iters(self) -> int:
        return self.warmup_iters + self.sam_iters + self.joint_iters

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "RunConfig":
        return from_dict({**self.to_dict(), **changes})


def from_dict(values: dict[str, Any]) -> RunConfig:
    """Build a config, refusing unknown keys with the list of known ones."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"Unknown setting(s) {', '.join(unknown)}. Known settings: {', '.join(sorted(known))}."
        )
    try:
        return RunConfig(**values)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise ConfigError(f"A setting has the wrong type: {exc}. Check the config file.") from exc


def load_config(path: str | Path, preset: str | None = None, **overrides: Any) -> RunConfig:
    """Read a JSON or TOML config file, on top of an optional preset, then apply overrides."""
    values = read_config_file(path)
    base = PRESETS[preset].to_dict() if preset else {}
    return from_dict(_with_user_classes(base, {**values, **overrides}))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings a JSON or TOML file gives (not yet checked against ``RunConfig``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist. Give the path of a .json or .toml file.")
    try:
        text = path.read_text()
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {path} could not be parsed ({exc}). Fix its syntax.") from exc
    except OSError as exc:
        raise ConfigError(f"Config file {path} cannot be read ({exc.strerror or exc}); check its permissions.") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {path} must hold a table of settings, not {type(values).__name__}.")
    return values


def _with_user_classes(base: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """``{**base, **user}`` where a class list the user gives sets the count and a count sets default names:
    a preset's 4 ACDC classes must not refuse 3 names that are right for the user's data."""
    merged = {**base, **user}
    names, count = user.get("class_names"), user.get("num_classes")
    if isinstance(names, list) and "num_classes" not in user:
        merged["num_classes"] = len(names)
    elif isinstance(count, int) and not isinstance(count, bool) and "class_names" not in user and count >= 1:
        merged["class_names"] = ["background"] + [f"class {c}" for c in range(1, count)]
    return merged


def preset(name: str, **overrides: Any) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset '{name}'. Choose one of {', '.join(PRESETS)}.")
    return from_dict(_with_user_classes(PRESETS[name].to_dict(), overrides))


PRESETS: dict[str, RunConfig] = {
    # A few minutes on a laptop CPU: small frame, short stages.
    # Measured on real ACDC volumes (benchmarks/volume_completion.py, docs/benchmarks.md): a supervised
    # warm-up at lr 0.05 learns in a few hundred steps where UniMatch at 0.01 learned nothing; SAM is
    # prompted from the Match model fused with the painted slices' interpolation (prior_weight) and refines
    # only the classes it segments well from exact boxes on the painted slices (sam_trust_dice: not the
    # myocardium ring). SAM does not train here (sam_every 0): training it too gained 0.02-0.03 Dice on two
    # volumes but took the run from 2.7 to 6.5 GB; with sam_every > 0 it trains gently toward filled masks.
    # Boxes 2 px wider than the prediction (the paper's 5 px at 256): 5 px took patient028_frame01 from
    # 0.871 to 0.745, a loose box lets SAM spill into the neighbouring structure.
    # 60 joint steps: 100 gained nothing on the val volumes never used for choosing (k = 1, 2, 3, 5: -0.008
    # to +0.006; +0.016-0.018 only on the half the idea came from) for 1.3-1.4x the time (docs/benchmarks.md).
    # joint_average stays off: on the same training runs the mean of the joint weights gained +0.002 to +0.015
    # at k = 2 and 5 but nothing at k = 3 (-0.001 on all 20 val volumes), lost on the phantom (-0.000 to -0.005)
    # and at k = 1 (-0.044) (docs/benchmarks.md, "The joint stage's average").
    # conf_thresh 0.8, not the paper's 0.95: 60 joint steps learn from more of SAM's refined pixels. Against
    # 0.95 with the same seeds, 100 ACDC runs (k = 1, 2, 3, 5; both halves of val): +0.008 Dice, better on 66;
    # the Match model alone up in every k and half (docs/benchmarks.md, "a lower confidence bar").
    # joint_fit_every 10: a myocardium the joint stage unlearned (Dice below 0.2 on its painted slices) sends
    # the Match model back to its last weights that fit it; held-out patient090_frame01 at k = 2 and 5: 0.692
    # -> 0.773, 0.656 -> 0.805; on val.list it never acted (docs/benchmarks.md, "the guard of the painted slices").
    # 600 warm-up steps, not 200: after 200 the Match model still missed its own painted slices (RV/Myo/LV
    # Dice 0.60-0.96 on them, k = 5); after 600, 0.93-0.99. Start's answer at k = 5: val 0.879 -> 0.898 (better
    # on 15 of 20), held-out 0.866 -> 0.890; k = 1-3 unchanged or slightly up; 34-40 s more on two threads
    # (docs/benchmarks.md, "a longer warm-up").
    "quick": RunConfig(size=128, warmup_method="supervised", lr=0.05, warmup_iters=600, sam_iters=0,
                       joint_iters=60, batch_labeled=4, batch_unlabeled=4, eval_every=50, checkpoint_every=50,
                       sam_every=0, sam_lr=1e-5, sam_fill_targets=True, sam_trust_dice=0.8, bbox_shift=2,
                       warmup_fit_dice=0.5, conf_thresh=0.8, joint_fit_every=10),
    # A good default on a GPU, tolerable on a CPU overnight.
    "standard": RunConfig(size=256, warmup_iters=2000, sam_iters=500, joint_iters=4000, eval_every=500,
                          checkpoint_every=500),
    # The paper's joint schedule: 30 000 iterations, batch 4 + 4, SGD 0.01 with poly decay.
    "paper": RunConfig(size=256, warmup_iters=0, sam_iters=1000, joint_iters=30000, eval_every=1000,
                       checkpoint_every=2000),
}
