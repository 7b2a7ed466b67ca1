"""What a run prints on a terminal: a tqdm bar over all stages, metric lines and warnings (CLI and demo)."""

from __future__ import annotations

import sys
import warnings

from .core.engine import events as ev
from .core.errors import DataWarning


def progress_printer(quiet: bool = False):
    """An event callback drawing a tqdm bar over all stages plus metric lines."""
    from tqdm import tqdm

    bar = None

    def on_event(e: ev.Event) -> None:
        nonlocal bar
        if e.kind == ev.LOG and e.data.get("level") == "warning":  # e.g. a checkpoint the full disk refused
            warn(e.message)  # shown even with --quiet: it is about the user's results
            return
        if quiet:
            return
        if bar is None and e.global_total:
            bar = tqdm(total=e.global_total, initial=e.global_iteration, unit="it", dynamic_ncols=True,
                       file=sys.stderr)
        if e.kind == ev.PROGRESS and bar is not None:
            bar.set_description(e.stage)
            losses = e.data.get("losses", {})
            bar.set_postfix(loss=f"{losses.get('loss', float('nan')):.3f}", refresh=False)
            bar.update(e.global_iteration - bar.n)
        elif e.kind == ev.METRICS:
            line = f"[{e.stage} {e.iteration}] {ev.format_metrics(e.data)}"
            (bar.write if bar else print)(line)
        elif e.kind in (ev.STAGE, ev.STOPPED, ev.CHECKPOINT, ev.LOG):
            (bar.write if bar else print)(e.message)
        elif e.kind == ev.DONE and bar is not None:
            bar.close()

    return on_event


def warn(message: str) -> None:
    """A warning line on stderr; never hidden by --quiet (tqdm.write keeps a progress bar intact)."""
    from tqdm import tqdm

    tqdm.write(f"napari-samatch: warning: {message}", file=sys.stderr)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: the core's DataWarnings as one line, others as Python prints them."""
    if issubclass(category, DataWarning):
        warn(str(message))
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning
