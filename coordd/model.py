"""The plain data every layer shares: a message as the daemon holds it, the errors that cross layers, a histogram,
a body's preview.

Nothing here does I/O or imports another coordd module, so the store, the
transports, delivery and the handlers can all depend on it without depending on
each other. Statuses and the error codes clients see are the wire protocol's
(coordctl.protocol: Status, TERMINAL_STATUSES, ERROR_CODES).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence

import msgspec

PREVIEW = 80  # characters of a body's first line in an `accepted` event, and in a bounce
_LEADING_SPACE = re.compile(r"\s*")

BOUNCE = "bounce"  # the kind of a bounce: coordd's notice that a message failed or was cancelled (coordd.bounces)


class Record(msgspec.Struct, gc=False):
    """A message as the daemon holds it while it is queued or being delivered.

    gc=False: its fields are scalars and a list (or tuple) of str, so it can be in no reference cycle, and
    the collector need not track the thousands that wait in the queues.
    """

    id: int
    agent: str
    body: str
    priority: str
    created: float
    sender: str | None = None
    kind: str | None = None
    tags: Sequence[str] | None = None  # as decoded: a request's tuple, a stored row's list
    key: str | None = None
    attempts: int = 0  # total attempts, as stored
    tries: int = 0  # attempts since it was last (re)queued; the retry budget counts these
    error: str | None = None
    reply_to: int | None = None  # the message this one answers
    thread: int = 0  # the id of its thread's first message; 0: it starts its own (its id, once it has one)
    subject: str | None = None
    group: str | None = None  # the group it was sent to ("@NAME"), whose pick chose `agent`
    read_at: float | None = None  # a pull agent's first fetch of it (coordd.pull); push deliveries leave it alone
    fetches: int = 0  # times a pull agent fetched it
    announced: int = 0  # the attempt a `delivering` event announced last: each attempt is announced once
    resent_from: int | None = None  # the message this one is a copy of (coordctl resend)
    origin: str | None = None  # "<node>:<id>" of a message another node forwarded here (coordd.cluster)

    def row(self) -> tuple:
        """Its row of schema.INSERT_MESSAGE."""
        return rows((self,))[0]


def rows(records: Iterable[Record]) -> list[tuple]:
    """The rows of schema.INSERT_MESSAGE for records, in one comprehension (a batch builds thousands). An empty
    column is '' or 0, never None: see INSERT_MESSAGE."""
    encode = msgspec.json.encode
    return [
        (
            r.id,
            r.agent,
            r.sender or "",
            r.priority,
            r.kind or "",
            encode(r.tags).decode() if r.tags else "",
            r.key or "",
            r.body,
            r.created,
            r.reply_to or 0,
            r.thread or r.id,
            r.subject or "",
            r.group or "",
            r.resent_from or 0,
        )
        for r in records
    ]


class ConfigError(Exception):
    """A config that cannot be served; the message names the file and the key."""


class StorageError(Exception):
    """The database refused a write; nothing in that write was stored."""


class StorageFull(StorageError):
    """The disk holding the database is full; writes succeed again once space is freed."""


# --- what a transport raises (coordd.transports describes when) ---------------------------------


class DeliveryError(Exception):
    """The first `delivered` messages went out; the next one failed (an attempt, retried with backoff)."""

    def __init__(self, reason: str, delivered: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = delivered


class TransportDown(Exception):
    """The first `delivered` messages went out; the transport cannot deliver now, for a reason that says nothing
    about the next message (a tmux server or pane missing, no display, a full disk...): no attempt is counted."""

    def __init__(self, reason: str, delivered: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = delivered


# --- what a request handler raises ----------------------------------------------------------------


class Refused(Exception):
    """A request is refused: the server answers an Error with this stable code (coordctl.protocol.ERROR_CODES)."""

    def __init__(self, code: str, message: str, message_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id


class Histogram:
    """Counts of observed values by bucket (upper bounds, ascending; the last bucket is +Inf) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


def preview(body: str) -> str:
    """The body's first line, from its first non-space character, at most PREVIEW characters; without
    copying the rest of a long body."""
    start = _LEADING_SPACE.match(body).end() if body[:1].isspace() else 0  # type: ignore[union-attr]
    end = body.find("\n", start, start + PREVIEW)
    return body[start : end if end >= 0 else start + PREVIEW]
