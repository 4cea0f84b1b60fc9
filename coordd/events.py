"""The event bus behind `watch`: what happens to messages, pushed to subscribers as it happens.

Publishing costs nothing while nobody watches: the observer checks `bus.active`
before it builds an event. A subscriber is one `watch` request on one
connection. Its events are written to the connection while the connection's
write buffer is under its high-water mark (the client keeps up), a few at a
time (see FLUSH_DELAY_S: an event is on the wire within 5 ms). When
the client is behind, they wait in the subscriber's own bounded buffer; once
that is full, further events are only counted, and when the client catches up
it gets a `missed` notice with the count, at the place of the gap. So a slow or
stuck subscriber holds a bounded amount of memory and never holds up delivery,
the senders, or the other subscribers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from coordctl import protocol as p


# Events are written together, FLUSH_DELAY_S after the first of them (a write to a socket costs ~15 us
# here, more than building and encoding a few events), or at once when FLUSH_AT of them are waiting.
FLUSH_DELAY_S = 0.005
FLUSH_AT = 64
WRITE_CHUNK = 16 * 1024  # bytes of frames per write (at most about the write buffer's high-water mark)


class Pushable(Protocol):
    """What a subscriber needs of its connection (coordd.server.Connection)."""

    def push(self, data: bytes) -> bool:
        """Write frames now unless the client is behind; False: nothing written."""
        ...


class Subscriber:
    def __init__(self, bus: EventBus, conn: Pushable, rid: int, agents: list[str], events: list[str],
                 limit: int) -> None:  # fmt: skip
        self.bus = bus
        self.conn = conn
        self.rid = rid
        self.agents = frozenset(agents) or None  # None: every agent
        self.events = frozenset(events) or None  # None: every event type
        self.limit = limit
        self.flush_at = min(FLUSH_AT, limit)
        # Frames not yet written, in order; an int stands for that many events missed at that place.
        self.backlog: deque[bytes | int] = deque()
        self.missed = 0  # missed since the backlog filled up, not yet placed in it
        self.blocked = False  # the client is behind: wait for the connection's resume_writing
        self.flush: asyncio.TimerHandle | None = None

    def wants(self, ev: p.Event) -> bool:
        return (self.agents is None or ev.agent in self.agents) and (self.events is None or ev.event in self.events)

    def offer(self, ev: p.Event) -> None:
        backlog = self.backlog
        if len(backlog) >= self.limit:
            self.missed += 1
            self.bus.missed += 1
            return
        if self.missed:
            backlog.append(self.missed)
            self.missed = 0
        ev.rid = self.rid
        backlog.append(p.frame(ev))
        if self.blocked:
            return
        if len(backlog) >= self.flush_at:
            self.drain()
        elif self.flush is None:
            self.flush = asyncio.get_running_loop().call_later(FLUSH_DELAY_S, self.drain)

    def resume(self) -> None:
        """The client caught up (the connection's resume_writing)."""
        self.blocked = False
        self.drain()

    def drain(self) -> None:
        """Write what waits, in order, for as long as the client keeps up."""
        if self.flush is not None:
            self.flush.cancel()
            self.flush = None
        backlog = self.backlog
        while not self.blocked:
            if not backlog and self.missed:  # caught up but for a gap at the end: say so
                backlog.append(self.missed)
                self.missed = 0
            if not backlog:
                return
            taken: list[bytes | int] = []
            size = 0
            while backlog and size < WRITE_CHUNK:
                item = backlog.popleft()
                taken.append(item)
                size += 16 if isinstance(item, int) else len(item)
            data = b"".join(p.frame(p.Missed(rid=self.rid, count=i)) if isinstance(i, int) else i for i in taken)
            if not self.conn.push(data):
                backlog.extendleft(reversed(taken))
                self.blocked = True


class EventBus:
    def __init__(self, buffer: int = 1000) -> None:
        self.buffer = buffer  # [metrics] watch_buffer, for subscribers made from now on
        self.subscribers: list[Subscriber] = []
        self.active = False  # anyone subscribed: publishers check this before building an event
        self.missed = 0  # events dropped for subscribers that fell behind, all time

    def subscribe(self, conn: Pushable, rid: int, agents: list[str], events: list[str]) -> Subscriber:
        sub = Subscriber(self, conn, rid, agents, events, self.buffer)
        self.subscribers.append(sub)
        self.active = True
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub.flush is not None:
            sub.flush.cancel()
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        self.active = bool(self.subscribers)

    def publish(self, ev: p.Event) -> None:
        for sub in self.subscribers:
            if sub.wants(ev):
                sub.offer(ev)


MAX_WATCHES = 16  # per connection


def answer(bus: EventBus, conn: Pushable, watches: dict[int, Subscriber], req: p.Watch | p.Unwatch,
           known: Callable[[str], bool]) -> p.Reply:  # fmt: skip
    """Start or end a watch on conn (whose watches by rid are `watches`); the reply, with the request's rid.

    Runs synchronously on the request's arrival, so the `watching` reply is written before any event.
    """
    if isinstance(req, p.Unwatch):
        sub = watches.pop(req.watch, None)
        if sub is None:
            return p.Error(rid=req.rid, code="bad_request", message=f"no watch with rid {req.watch} on this connection")
        sub.drain()  # what can go out before `unwatched` does; the rest is dropped
        bus.unsubscribe(sub)
        return p.Unwatched(rid=req.rid, watch=req.watch)
    if unknown := [a for a in req.agents if not known(a)]:
        return p.Error(rid=req.rid, code="unknown_agent", message=f"agents: no agent named {unknown[0]!r}")
    if req.rid == 0 or req.rid in watches:
        return p.Error(rid=req.rid, code="bad_request",
                       message=f"rid {req.rid} cannot name a watch: give each watch its own nonzero rid")  # fmt: skip
    if len(watches) >= MAX_WATCHES:
        return p.Error(rid=req.rid, code="bad_request", message=f"at most {MAX_WATCHES} watches per connection")
    watches[req.rid] = sub = bus.subscribe(conn, req.rid, req.agents, req.events)
    return p.Watching(rid=req.rid, buffer=sub.limit)
