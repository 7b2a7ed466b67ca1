"""How well the Match model fits the slices the user painted, and what the loop does when it stops fitting them.

The painted slices are the one truth a run has. Two checks read the Match model's Dice on them: the warm-up's
refit (``loop.refit_warmup``: a class still missed after the warm-up gets more warm-up) and the joint stage's
guard (:class:`FitGuard`): a class the model fit when the joint stage began and has lost sends the model back
to its last weights that still fit every such class. On ACDC the joint stage, at a learning rate restarted at
0.05 on a handful of pseudo-labeled slices, sometimes unlearns a thin or small structure within ten steps and
never learns it back (patient090_frame01 at k = 5: the myocardium's Dice on its own painted slices 0.82 at the
warm-up's end, 0.09 at joint step 10, 0.00 at the end), and the answer then loses that structure on every
unpainted slice.
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


MAX_ROLLBACKS = 2
# A class is lost when its Dice on the painted slices falls below this. Its fit swings by half within ten joint
# steps and comes back (0.36-0.49 on val.list's patient082/085/087 at k = 3); a loss that stays reads 0.00-0.09.
LOST_DICE = 0.2


class FitGuard:
    """Snapshots of the Match model during the joint stage, taken every ``every`` steps while it still fits
    (Dice at least ``bar`` on the painted slices) every class it fit when the guard began.

    A check that finds such a class lost (Dice below ``LOST_DICE``) sends the model back to the last snapshot
    (:meth:`after_step`), and :meth:`finish` does so at the stage's end. A check costs one forward pass over
    at most ``calibrate_slices`` painted slices and draws no random numbers, so a run the guard never acts on
    is the run without it, bit for bit.
    """

    def __init__(self, engine, bar: float, every: int) -> None:
        self.engine, self.bar, self.every = engine, bar, every
        fit = painted_fit(engine)
        self.required = [k for k, d in fit.items() if d >= bar]  # a class never fit cannot be lost
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.step, self.rollbacks = -1, 0
        self._keep(engine.stage_iter, fit)

    def _holds(self, fit: dict[int, float]) -> bool:
        return all(fit[k] >= self.bar for k in self.required)

    def _lost(self, fit: dict[int, float]) -> str:
        """The classes the model fit and has lost, with their Dice ('' for none)."""
        names = self.engine.config.class_names
        return ", ".join(f"{names[k]} {fit[k]:.2f}" for k in self.required if fit[k] < LOST_DICE)

    def _keep(self, step: int, fit: dict[int, float]) -> None:
        if self._holds(fit):
            with self.engine.lock:
                self.snapshot = {k: v.detach().clone() for k, v in self.engine.unet.state_dict().items()}
            self.step = step

    def _restore(self) -> str:
        with self.engine.lock:
            self.engine.unet.load_state_dict(self.snapshot)
        return "the joint stage's start" if self.step == 0 else f"joint step {self.step}"

    def after_step(self, step: int, schedule) -> str:
        """Every ``every`` steps: a snapshot while the model fits; once it has lost a class, back to the last
        snapshot with the momentum cleared and the rest of the stage at half the learning rate (at most
        ``MAX_ROLLBACKS`` times). Returns the line for the user, or ''."""
        if step % self.every:
            return ""
        fit = painted_fit(self.engine)
        lost = self._lost(fit)
        if not lost or self.snapshot is None or self.rollbacks >= MAX_ROLLBACKS:
            self._keep(step, fit)
            return ""
        self.rollbacks += 1
        where = self._restore()
        self.engine.opt_unet.state.clear()  # its momentum points where the model lost the class
        schedule.base_lrs = [b / 2 for b in schedule.base_lrs]
        return (f"Joint step {step}: the Match model lost {lost} (Dice on the painted slices); back to its weights "
                f"from {where}, at half the learning rate")

    def finish(self) -> str:
        """Back to the last snapshot if the model now misses a class it fit; returns the line for the user, or ''."""
        lost = self._lost(painted_fit(self.engine))
        if not lost or self.snapshot is None:
            return ""
        where = self._restore()
        return (f"The joint stage lost {lost} (Dice on the painted slices); the Match model goes back to its "
                f"weights from {where}, which still fit every painted class")
