"""Poly learning-rate decay that cannot overrun.

The reference computed ``lr * (1 - it / total) ** 0.9`` with no bound on ``it``: one step past the end
the base goes negative and Python returns a complex number. Here the iteration is clamped to
``[0, total - 1]``, so the last step still has a small positive rate and the result is always a real
float >= 0.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["poly_lr", "PolySchedule"]


def poly_lr(base_lr: float, iteration: int, total: int, power: float = 0.9) -> float:
    """``base_lr * (1 - i / total) ** power`` with ``i`` clamped to ``[0, total - 1]``."""
    if total < 1:
        raise ConfigError(f"The schedule needs at least 1 iteration, got total={total}.")
    if base_lr < 0 or power < 0:
        raise ConfigError(f"Learning rate and power must be >= 0 (got lr={base_lr}, power={power}).")
    i = min(max(int(iteration), 0), total - 1)
    return float(base_lr) * float((1.0 - i / total) ** power)


class PolySchedule:
    """Sets every param group's lr to ``poly_lr(base, iteration) * group.get('lr_mult', 1.0)``.

    ``base`` is ``base_lr`` when given, else each group's lr at construction (kept in the group as
    ``'initial_lr'``, like torch's schedulers). Put multipliers in ``group['lr_mult']``; do not
    pre-multiply the group's lr as well. Call :meth:`step` with the iteration about to run
    (0-based) or with no argument to advance by one. The constructor applies iteration 0.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total: int,
        power: float = 0.9,
        base_lr: float | None = None,
    ) -> None:
        poly_lr(1.0, 0, total, power)  # validates total and power
        self.optimizer, self.total, self.power = optimizer, int(total), float(power)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [float(base_lr if base_lr is not None else g["initial_lr"]) for g in optimizer.param_groups]
        self.last_iteration = -1
        self.step(0)

    def lrs_at(self, iteration: int) -> list[float]:
        """The lrs the groups get at ``iteration`` (does not change the optimizer)."""
        return [
            poly_lr(base, iteration, self.total, self.power) * float(g.get("lr_mult", 1.0))
            for base, g in zip(self.base_lrs, self.optimizer.param_groups)
        ]

    def step(self, iteration: int | None = None) -> list[float]:
        """Apply the lrs for ``iteration`` (default: the previous one + 1); returns them."""
        self.last_iteration = self.last_iteration + 1 if iteration is None else int(iteration)
        lrs = self.lrs_at(self.last_iteration)
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        return lrs

    def get_last_lr(self) -> list[float]:
        """The lrs currently set in the optimizer's groups."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "power": self.power, "base_lrs": list(self.base_lrs), "last_iteration": self.last_iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved schedule and re-apply its lrs (so the optimizer matches even if saved lrs differ)."""
        try:
            total, power = int(state["total"]), float(state["power"])
            base_lrs, last = [float(b) for b in state["base_lrs"]], int(state["last_iteration"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"The saved learning-rate schedule is incomplete ({exc}); start the schedule afresh.") from exc
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ConfigError(
                f"The saved schedule has {len(base_lrs)} parameter groups but the optimizer has "
                f"{len(self.optimizer.param_groups)}; resume with the same model and optimizer settings."
            )
        poly_lr(1.0, 0, total, power)
        self.total, self.power, self.base_lrs = total, power, base_lrs
        self.step(max(last, 0))
        self.last_iteration = last
