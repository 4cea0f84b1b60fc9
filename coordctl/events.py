"""Events for people and scripts: `coordctl watch` and `history --follow` print them as they come.

One line per event, or with --json one JSON object per line (JSON Lines): the
event's fields, every one (defaults too), `event` saying which, and `time_iso`,
its `time` in ISO 8601 with the offset. A watcher that
fell behind gets `{"event": "missed", "count": N}` where events were dropped.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import msgspec

from coordctl import human, protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# The order of a message's events; a history page's status maps onto it (see `follow_filter`).
RANK = {
    "accepted": 0,
    "queued": 0,
    "delivering": 1,
    "held": 1,  # waits for its agent: after a delivering that found the agent down, or with no attempt yet
    "retried": 2,
    "delivered": 3,
    "failed": 3,
    "cancelled": 3,
    "read": 4,
    "acked": 5,
}


def latency(seconds: float | None) -> str:
    """``850us``, ``3.2ms``, ``1.25s``, ``4m10s``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s" if seconds < 60 else human.duration(seconds)


def event_line(ev: protocol.Event) -> str:
    lt = time.localtime(ev.time)  # local time with its offset: 17:23:30.250+01:00
    at = time.strftime("%H:%M:%S", lt) + f".{int(ev.time % 1 * 1000):03d}{human.offset(lt)}"
    line = f"{at}  {ev.event:<10}  #{ev.id} {ev.group + ' ' if ev.group else ''}-> {ev.agent}"
    if ev.event == "accepted":
        line += f"  from {ev.sender or '-'}" + ("  URGENT" if ev.priority == "urgent" else "")
        line += f": {ev.preview}" if ev.preview else ""
    elif ev.event == "delivering":
        line += f"  attempt {ev.attempt}"
    elif ev.event == "delivered":
        line += f"  after {latency(ev.latency)}" + (f" (attempt {ev.attempt})" if ev.attempt > 1 else "")
    elif ev.event == "held":
        line += f"  waits, no attempt counted: {human.first_line(ev.reason or '-', 100)}"
    elif ev.event == "retried":
        if ev.error is None:
            line += "  queued again by a retry request"
        else:
            line += f"  attempt {ev.attempt} failed, next in {latency(ev.retry_in)}: {human.first_line(ev.error, 100)}"
    elif ev.event == "failed":
        line += f"  gave up after attempt {ev.attempt}: {human.first_line(ev.error or '-', 100)}"
    elif ev.event in ("read", "acked"):
        line += f"  from {ev.sender or '-'}"
    return line


def as_json(item: protocol.Event | protocol.Missed) -> str:
    if isinstance(item, protocol.Missed):
        return msgspec.json.encode({"event": "missed", "count": item.count}).decode()
    fields = msgspec.structs.asdict(item)
    fields["time_iso"] = human.iso(item.time)  # beside `time` (unix seconds), as coordctl's other JSON
    return human.json_escaped(msgspec.json.encode(fields)).decode()


def print_stream(
    items: Iterable[protocol.Event | protocol.Missed], json: bool, skip: Callable[[protocol.Event], bool] | None = None
) -> None:
    """Print each event as it comes, until ^C, the reader of a pipe leaving (both: a normal end), or
    the daemon closing the connection (DaemonUnavailable: exit 3).

    Give the Client.watch that makes `items` ``idle=sys.stdout.flush``: lines are then flushed
    whenever the stream is about to wait, so a pipe gets each one as soon as it happened, and a
    burst of events costs one write, not one per line.
    """
    out = sys.stdout
    try:
        for item in items:
            if isinstance(item, protocol.Missed):
                text = as_json(item) if json else f"... missed {item.count} events here: this watcher fell behind"
            elif skip is not None and skip(item):
                continue
            else:
                text = as_json(item) if json else human.visible(event_line(item))
            out.write(text + "\n")
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # e.g. `coordctl watch | head`: stop quietly, and flush nothing more at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def follow_filter(page: protocol.Page, sender: str | None) -> Callable[[protocol.Event], bool]:
    """For `history --follow`, which subscribes before it reads the page: skip the events the page
    already shows (a message's events up to its status there), and those of other senders."""
    shown = {m.id: RANK["acked" if m.acked_at else "read" if m.read_at else m.status] for m in page.messages}

    def skip(ev: protocol.Event) -> bool:
        if sender is not None and ev.sender != sender:
            return True
        rank = shown.get(ev.id)
        if rank is None:
            return False
        if RANK[ev.event] <= rank:
            return True
        del shown[ev.id]  # newer than the page: so is everything after it
        return False

    return skip
