"""Text for people: tables, durations, sizes, timestamps, and the time specs
that ``--since``/``--until`` accept. No third-party formatting libraries: the
CLI must start fast.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in (headers, *rows)
    )


def duration(seconds: float) -> str:
    """Two units at most: ``45s``, ``12m30s``, ``3h05m``, ``2d04h``."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int) -> str:
    """Bytes in binary units: ``512 B``, ``12.3 MiB``."""
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def timestamp(t: float | None) -> str:
    """Local time to the second, or ``-``."""
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def first_line(text: str, width: int) -> str:
    """The first line of ``text``, cut to ``width`` with an ellipsis; ``…`` marks more lines too."""
    line, _, rest = text.partition("\n")
    if len(line) > width:
        return line[: max(width - 1, 0)] + "…"
    return line + "…" if rest.strip() else line


def parse_time(spec: str, now: float | None = None) -> float:
    """Unix seconds from ``1763892000``, ``2026-11-23T10:00`` (local time
    unless it carries an offset) or ``10m``/``2h``/``1d``/``1w`` ago.

    Raises ValueError with a message fit for the user.
    """
    spec = spec.strip()
    unit = _UNITS.get(spec[-1:])
    if unit is not None:
        try:
            amount = float(spec[:-1])
        except ValueError:
            pass
        else:
            return (time.time() if now is None else now) - amount * unit
    try:
        return float(spec)
    except ValueError:
        pass
    from datetime import datetime  # only here: parsing ISO-8601 is all we need it for

    try:
        return datetime.fromisoformat(spec).timestamp()
    except ValueError:
        raise ValueError(
            f"{spec!r} is not a time: use unix seconds, ISO-8601 (2026-11-23T10:00) or an age (10m, 2h, 1d)"
        ) from None
