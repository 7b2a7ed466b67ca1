"""What the engine tells the outside world while it runs.

The engine calls one callback with :class:`Event` objects; the CLI prints them, the napari widgets draw
them on the main thread. Events carry plain numbers and numpy arrays only, never tensors or models, so a
receiver in another thread can keep them without holding the training graph alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# kinds, in the order a run usually emits them
STAGE = "stage"            # a stage starts: data = {"stage", "iters"}
PROGRESS = "progress"      # after each step: data = {"losses": {...}, "lr", "step_s"}
METRICS = "metrics"        # validation / pseudo-label quality: data = {"val_dice": {...}, ...}
# previews (and the interpolation at a run's start):
# data = {"indices", "prompts", "raw", "refined", "confidence", "slice_confidence"}
PSEUDO_LABELS = "pseudo_labels"
CHECKPOINT = "checkpoint"  # a checkpoint was written: data = {"path"}
LOG = "log"                # a line for the user
PAUSED = "paused"
RESUMED = "resumed"
STOPPED = "stopped"        # stop honoured, checkpoint written
DONE = "done"              # all stages finished: data = summary
ERROR = "error"            # the run failed: message is the user-facing sentence


@dataclass
class Event:
    kind: str
    stage: str = ""
    iteration: int = 0          # within the stage, 1-based after a step
    stage_total: int = 0
    global_iteration: int = 0   # over all stages
    global_total: int = 0
    eta_s: float | None = None  # seconds left for the whole run, from the recent step times
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.global_iteration / self.global_total if self.global_total else 0.0


EventCallback = Callable[[Event], None]


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_metrics(data: dict[str, Any]) -> str:
    """A METRICS event's numbers as one log line: validation Dice, then pseudo-label Dice when measured."""
    line = f"val mean Dice {data.get('val_mean_dice', float('nan')):.4f}"
    if "pseudo_raw_dice" in data:
        line += f" | pseudo-labels raw {data['pseudo_raw_dice']:.4f}"
    if "pseudo_refined_dice" in data:
        line += f" refined {data['pseudo_refined_dice']:.4f}"
    return line
