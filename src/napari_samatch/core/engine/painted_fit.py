"""How well the Match model fits the slices the user painted, and what the loop does when it stops fitting them.

The painted slices are the one truth a run has. Two checks read the Match model's Dice on them: the warm-up's
refit (``loop.refit_warmup``: a class still missed after the warm-up gets more warm-up) and the joint stage's
guard (:class:`FitGuard`). The joint stage, at a learning rate restarted at 0.05 on a handful of pseudo-labeled
slices, sometimes unlearns a class within ten steps. Most such losses do not reach the answer: a class SAM
refines is prompted from the prior-fused probabilities, so the interpolation and SAM bring it back
(patient028_frame02 at k = 5: the LV's Dice on its painted slices 0.00, the answer 0.845 against the
interpolation's 0.779), and sending the model back costs the joint stage's gains elsewhere (tried during the
stage: 4 of 19 val.list volumes at k = 3 sent back, all worse, -0.008 to -0.050). A class SAM does not refine
(the myocardium's ring) comes from the Match model alone, and losing it loses it on every unpainted slice
(patient090_frame01 at k = 5: the myocardium 0.82 on its painted slices at the warm-up's end, 0.00 at the
joint stage's end, the answer 0.656 against the interpolation's 0.696). That is the loss the guard undoes.
"""

from __future__ import annotations

import torch

from ..evaluation.metrics import dice_per_class


def painted_fit(engine) -> dict[int, float]:
    """The Match model's Dice per class on the painted slices (``Engine.labeled_spread``), for the classes
    painted there; ``predict`` takes the engine's lock and leaves the model's training state alone."""
    pick = engine.labeled_spread()
    pred = engine.predict(pick.tolist()).argmax(1)
    truth = engine.labels[pick].to(pred.device)
    dice = dice_per_class(pred, truth, engine.config.num_classes).tolist()
    return {k: dice[k] for k in range(1, engine.config.num_classes) if bool((truth == k).any())}


# A class is lost when its Dice on the painted slices falls below this. Its fit swings by half within ten joint
# steps and comes back (0.36-0.49 on val.list's patient082/085/087 at k = 3); a loss that stays reads 0.00-0.09.
LOST_DICE = 0.2


class FitGuard:
    """Snapshots of the Match model during the joint stage, taken every ``every`` steps while it still fits
    (Dice at least ``bar`` on the painted slices) every class it fit when the guard began.

    :meth:`finish`, at the stage's end, restores the latest snapshot when the model has lost (Dice below
    ``LOST_DICE``) such a class that the answer takes from the Match model alone (one SAM does not refine).
    A check costs one forward pass over at most ``calibrate_slices`` painted slices and draws no random
    numbers, so a run the guard does not act on is the run without it, bit for bit.
    """

    def __init__(self, engine, bar: float, every: int) -> None:
        self.engine, self.bar, self.every = engine, bar, every
        fit = painted_fit(engine)
        self.required = [k for k, d in fit.items() if d >= bar]  # a class never fit cannot be lost
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.step = -1
        self._keep(engine.stage_iter, fit)

    def _keep(self, step: int, fit: dict[int, float]) -> None:
        if all(fit[k] >= self.bar for k in self.required):
            with self.engine.lock:
                self.snapshot = {k: v.detach().clone() for k, v in self.engine.unet.state_dict().items()}
            self.step = step

    def after_step(self, step: int) -> None:
        if step % self.every == 0:
            self._keep(step, painted_fit(self.engine))

    def _refined_by_sam(self) -> set[int]:
        """The classes the answer takes from SAM's masks: those it was calibrated to refine, or all."""
        if not self.engine.uses_sam():
            return set()
        trusted = self.engine.refiner.trusted  # None: never calibrated, SAM refines every class
        return set(range(1, self.engine.config.num_classes)) if trusted is None else set(trusted)

    def finish(self) -> str:
        """Back to the last snapshot if the model has lost a class only it answers for; the line for the user,
        or ''."""
        fit = painted_fit(self.engine)
        by_sam = self._refined_by_sam()
        lost = [k for k in self.required if fit[k] < LOST_DICE and k not in by_sam]
        if not lost or self.snapshot is None:
            return ""
        with self.engine.lock:
            self.engine.unet.load_state_dict(self.snapshot)
        names = self.engine.config.class_names
        where = "the joint stage's start" if self.step == 0 else f"joint step {self.step}"
        return (f"The joint stage lost {', '.join(f'{names[k]} {fit[k]:.2f}' for k in lost)} (Dice on the painted "
                f"slices); the Match model goes back to its weights from {where}, which still fit every painted class")
