"""Figures the reliability tests measure, for perf/reliability_report.py.

Inert unless COORDD_FIGURES_DIR is set (the report sets it when it runs these
tests): then each call writes <dir>/<name>.json. Also reads a daemon's memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def record(name: str, **figures) -> None:
    out = os.environ.get("COORDD_FIGURES_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{name}.json").write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A /proc/PID/status memory field in KiB: VmRSS (now) or VmHWM (the peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)
