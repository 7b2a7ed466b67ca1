"""The Match model's weights averaged over the joint stage (``RunConfig.joint_average``).

A short joint stage restarts the learning rate high and ends wherever its last batches left the model; the
mean of the weights after each of its steps ends in a steadier place. Measured with the `quick` preset on the
ACDC val volumes (docs/benchmarks.md, "The joint stage's average"), on the same training runs: +0.002 to
+0.015 Dice at k = 2 and 5, nothing at k = 3, a loss at k = 1 and on the phantom; so it is off by default.
BatchNorm's running statistics are averaged with the weights; counters keep the last value.
"""

from __future__ import annotations

from typing import Any

import torch


class WeightAverage:
    """The running mean of a model's state over the steps it is given (kept on the model's device)."""

    def __init__(self) -> None:
        self.mean: dict[str, torch.Tensor] | None = None
        self.count = 0

    def add(self, model: torch.nn.Module) -> None:
        self.count += 1
        state = model.state_dict()
        if self.mean is None:
            self.mean = {k: v.detach().clone() for k, v in state.items()}
            return
        for key, value in state.items():
            mean = self.mean[key]  # a checkpoint's mean may come back on another device
            if value.is_floating_point():
                mean.add_(value.detach().to(mean.device) - mean, alpha=1.0 / self.count)
            else:
                mean.copy_(value)

    def apply(self, model: torch.nn.Module) -> None:
        """Load the mean into ``model`` (nothing happens before the first ``add``)."""
        if self.mean is not None:
            model.load_state_dict(self.mean)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, so that a resumed joint stage goes on averaging where it stopped."""
        return {"mean": self.mean, "count": self.count}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "WeightAverage":
        average = cls()
        if state:
            average.mean, average.count = state.get("mean"), int(state.get("count", 0))
        return average
