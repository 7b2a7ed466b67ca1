"""What a run prints on a terminal: a tqdm bar over all stages, metric lines and warnings (CLI and demo)."""

from __future__ import annotations

import sys

from .core.engine import events as ev


def progress_printer(quiet: bool = False):
    """An event callback drawing a tqdm bar over all stages plus metric lines."""
    from tqdm import tqdm

    bar = None

    def on_event(e: ev.Event) -> None:
        nonlocal bar
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
        elif e.kind == ev.LOG and e.data.get("level") == "warning":  # e.g. a checkpoint the full disk refused
            (bar.write if bar else print)(f"warning: {e.message}")
        elif e.kind in (ev.STAGE, ev.STOPPED, ev.CHECKPOINT, ev.LOG):
            (bar.write if bar else print)(e.message)
        elif e.kind == ev.DONE and bar is not None:
            bar.close()

    return on_event
