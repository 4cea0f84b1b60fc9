"""Text for people: tables, durations, sizes, timestamps, and the time specs
that ``--since``/``--until`` accept. No third-party formatting libraries: the
CLI must start fast.

Every human-readable line coordctl prints goes through `echo` (or, for a stream,
`visible`): what it shows is other people's text (bodies, senders, kinds, the
errors transports report), and on a terminal a control character in it is a
command, not text: ``ESC ] 52`` writes the clipboard, ``ESC [ 2 J`` clears the
screen, CR overwrites the line, U+202E shows what follows reversed. So they are
made visible, on a terminal and in a pipe alike:

- C0 controls but newline and tab, and DEL, become their Unicode Control
  Pictures, one column wide like a character: ESC is ``␛`` (U+241B), BEL ``␇``,
  CR ``␍``, DEL ``␡``. An escape sequence is then inert text: ``␛]52;c;SGVsbG8=␇``.
- C1 controls (U+0080-U+009F), the bidirectional controls (U+061C, U+200E,
  U+200F, U+202A-U+202E, U+2066-U+2069) and the line and paragraph separators
  (U+2028, U+2029), which have no picture, become ``<U+009B>``.

``--json`` keeps the exact text; `json_escaped` writes those characters as JSON
``\\u`` escapes, which decode to the same string.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# What `visible` replaces: C0 but tab and newline; DEL and C1; U+061C, U+200E-200F, U+2028-202E, U+2066-2069.
_HIDDEN = [
    (0x00, 0x08),
    (0x0B, 0x1F),
    (0x7F, 0x9F),
    (0x061C, 0x061C),
    (0x200E, 0x200F),
    (0x2028, 0x202E),
    (0x2066, 0x2069),
]


def _shown(c: int) -> int | str:
    """What `visible` puts for code point c: its control picture (U+2400 + c; U+2421 for DEL), else <U+XXXX>."""
    if c < 0x80:
        return 0x2421 if c == 0x7F else 0x2400 + c
    return f"<U+{c:04X}>"


_VISIBLE = {c: _shown(c) for lo, hi in _HIDDEN for c in range(lo, hi + 1)}  # for str.translate
# To look for them first: most text has none, and a search costs a fifth of a translate for a table cell and a
# tenth for text that is not ASCII (measured: 0.2 against 1.0 us for "Agent-1"; 9 against 146 ms for 1.4 MB).
_CONTROL = re.compile("[" + "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in _HIDDEN) + "]")
# The ones msgspec's JSON leaves raw (it escapes C0 itself), as UTF-8: DEL, C1 (C2 80-9F), U+061C (D8 9C),
# U+200E/F, U+2028-202E (E2 80 ..), U+2066-2069 (E2 81 ..). Each begins with a lead byte, so no match is
# ever the middle of another character.
_JSON_RAW = re.compile(rb"\x7f|\xc2[\x80-\x9f]|\xd8\x9c|\xe2\x80[\x8e\x8f\xa8-\xae]|\xe2\x81[\xa6-\xa9]")


def visible(text: str) -> str:
    """``text`` with its control characters made visible (see the module's doc); newline and tab stay."""
    return text.translate(_VISIBLE) if _CONTROL.search(text) else text


def echo(text: str, err: bool = False, nl: bool = True) -> None:
    """Print a line (or lines) for people: what every human-readable printer uses."""
    click.echo(visible(text), err=err, nl=nl)


def json_escaped(encoded: bytes) -> bytes:
    """msgspec's JSON with DEL, C1 and the bidi and line-separator characters escaped as ``\\u00XX``:
    the same JSON string, but none of them reaches a terminal raw."""
    if _JSON_RAW.search(encoded) is None:
        return encoded
    return _JSON_RAW.sub(lambda m: b"\\u%04x" % ord(m[0].decode()), encoded)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], paint: Callable[[int, str], str | None] | None = None
) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded. Cells are made `visible`
    first, so that the columns line up. paint(column, cell) may name a colour for a cell (click.style's
    ``fg``); the escape codes are added after the padding is measured, so colour does not move columns."""
    rows = [[visible(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]

    def cell(i: int, text: str, colour: str | None) -> str:
        padded = text.ljust(widths[i])
        return padded if colour is None else click.style(text, fg=colour) + padded[len(text) :]

    def line(row: Sequence[str], painted: bool) -> str:
        return "  ".join(cell(i, c, paint(i, c) if painted and paint else None) for i, c in enumerate(row)).rstrip()

    return "\n".join([line(headers, False), *(line(row, True) for row in rows)])


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
    """Local time to the second with its UTC offset (``2026-12-03 17:23:30 +0100``), or ``-``."""
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(t))


def offset(lt: time.struct_time) -> str:
    """A local time's UTC offset as ISO 8601 writes it: ``+01:00``."""
    minutes = (lt.tm_gmtoff or 0) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def iso(t: float) -> str:
    """Unix seconds as ISO 8601 local time with the offset, to the microsecond: ``2026-12-03T17:23:30.250000+01:00``
    (what ``datetime.fromisoformat`` reads back; no datetime import here, to start fast)."""
    whole = int(t // 1)
    lt = time.localtime(whole)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', lt)}.{int((t - whole) * 1e6):06d}{offset(lt)}"


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 failed message``, ``2 failed messages`` (nouns: the plural when it is not noun + s)."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def plural_g(x: float, noun: str) -> str:
    """`plural` of a float, written short: ``1 day``, ``0.5 days``, ``30 days``."""
    return f"{x:g} {noun if x == 1 else noun + 's'}"


def first_line(text: str, width: int) -> str:
    """The first line of ``text``, cut to ``width`` with an ellipsis; ``…`` marks more lines too."""
    line, _, rest = text.partition("\n")
    if len(line) > width:
        return line[: max(width - 1, 0)] + "…"
    return line + "…" if rest.strip() else line


def parse_duration(spec: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``2h``, ``1d`` or ``1w``. Raises ValueError with a message fit for
    the user."""
    spec = spec.strip()
    unit = _UNITS.get(spec[-1:])
    try:
        return float(spec[:-1]) * unit if unit is not None else float(spec)
    except ValueError:
        raise ValueError(
            f"{spec!r} is not a duration: use seconds or a number with s, m, h, d or w (10m, 2h)"
        ) from None


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
