"""Memory bookkeeping shared by the scale benchmarks: one row per phase (time, RSS, peak), and the report."""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path
from typing import Any

import psutil


class PhaseLog:
    """Records, after each named phase, the elapsed time, the RSS and the process's peak RSS (ru_maxrss)."""

    def __init__(self, sampled: bool = False) -> None:
        self.sampled = sampled  # the caller calls sample() on a timer: rows carry the sampled peak too
        self.proc = psutil.Process()
        self.t0 = time.perf_counter()
        self.phases: list[dict[str, Any]] = []
        self.samples: list[tuple[float, float]] = []  # (seconds, RSS MiB), for callers that sample on a timer

    def rss(self) -> float:
        return self.proc.memory_info().rss / 2**20

    def sample(self) -> None:
        self.samples.append((time.perf_counter() - self.t0, self.rss()))

    def phase(self, name: str, **extra: Any) -> None:
        row = {"phase": name, "seconds": round(time.perf_counter() - self.t0, 1), "rss_mib": round(self.rss(), 1)}
        if self.sampled:
            row["peak_sampled_mib"] = round(max([s for _, s in self.samples] or [row["rss_mib"]]), 1)
        row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        row.update(extra)
        self.phases.append(row)
        print(f"{name:10s} {row['seconds']:7.1f} s  RSS {row['rss_mib']:7.0f} MiB  peak {row['peak_rss_mib']:7.0f} MiB"
              + "".join(f"  {k} {v}" for k, v in extra.items()), flush=True)

    def write(self, out: Path, args: Any, **extra: Any) -> None:
        """Write the JSON report (machine, arguments, RAM, phases, samples) and print the peak."""
        report = {"machine": platform.platform(), **extra, "args": {k: str(v) for k, v in vars(args).items()},
                  "total_ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "phases": self.phases}
        if self.sampled:
            report["rss_samples"] = [(round(t, 1), round(m, 1)) for t, m in self.samples]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"peak RSS {self.phases[-1]['peak_rss_mib']:.0f} MiB of {report['total_ram_gib']} GiB; wrote {out}")
