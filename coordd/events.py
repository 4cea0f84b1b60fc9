"""The event bus behind `watch`: what happens to messages, pushed to subscribers as it happens.

Publishing costs nothing while nobody watches: the observer checks `bus.active`
before it builds an event. While someone does, publishing is one list append:
events wait on the bus and go out together, FLUSH_DELAY_S after the first of
them (or at once when FLUSH_AT wait), as one `events` frame per subscriber. On
a send's path that saves what made watching costly: an encode, a frame and a
socket write per event, here and a decode per event in the watcher.

A subscriber is one `watch` request on one connection. Its events are written to
the connection while the connection's write buffer is under its high-water mark
(the client keeps up). When the client is behind, they wait in the subscriber's
own bounded backlog; once that is full, further events are only counted, and
when the client catches up it gets a `missed` notice with the count, at the
place of the gap. So a slow or stuck subscriber holds a bounded amount of memory
and never holds up delivery, the senders, or the other subscribers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from coordctl import protocol as p

# Events wait at most FLUSH_DELAY_S to go out together (a socket write costs ~15 us here, an event's
# encoding ~0.1 us in a batch); FLUSH_AT waiting go out at once, so a burst's events follow it closely.
FLUSH_DELAY_S = 0.005
FLUSH_AT = 256
FRAME_EVENTS = 256  # events per `events` frame at most (~25 KB): a frame stays far under any frame cap


class Pushable(Protocol):
    """What a subscriber needs of its connection (coordd.server.Connection)."""

    def push(self, data: bytes) -> bool:
        """Write frames now unless the client is behind; False: nothing written."""
        ...


class Sink(Protocol):
    """What the bus hands its events to: a Subscriber (a watch), or the dashboard's event stream."""

    def take(self, batch: list[p.Event]) -> None:
        """The bus's latest events, in the order they happened; never blocks."""
        ...


class Subscriber:
    def __init__(
        self, bus: EventBus, conn: Pushable, rid: int, agents: Iterable[str], events: Iterable[str], limit: int
    ) -> None:
        self.bus = bus
        self.conn = conn
        self.rid = rid
        self.agents = frozenset(agents) or None  # None: every agent
        self.events = frozenset(events) or None  # None: every event type
        self.limit = limit
        # Events not yet written, in order, in the bus's batches; an int stands for that many events
        # missed at that place. `held` events in all, at most `limit`.
        self.backlog: deque[list[p.Event] | int] = deque()
        self.held = 0
        self.missed = 0  # missed since the backlog filled up, not yet placed in it
        self.blocked = False  # the client is behind: wait for the connection's resume_writing

    def take(self, batch: list[p.Event]) -> None:
        """The bus's latest events, in the order they happened."""
        if self.agents is not None or self.events is not None:
            agents, kinds = self.agents, self.events
            batch = [
                ev for ev in batch if (agents is None or ev.agent in agents) and (kinds is None or ev.event in kinds)
            ]
            if not batch:
                return
        if not self.blocked and not self.backlog and not self.missed:  # it keeps up: the usual case
            if self.conn.push(self._frames(batch)):
                return
            self.blocked = True
        room = self.limit - self.held
        kept = batch if len(batch) <= room else batch[:room]
        if kept:
            if self.missed:
                self.backlog.append(self.missed)
                self.missed = 0
            self.backlog.append(kept)
            self.held += len(kept)
        if dropped := len(batch) - len(kept):
            self.missed += dropped
            self.bus.missed += dropped
        self.drain()

    def resume(self) -> None:
        """The client caught up (the connection's resume_writing)."""
        self.blocked = False
        self.drain()

    def drain(self) -> None:
        """Write what waits, in order, for as long as the client keeps up."""
        backlog = self.backlog
        while not self.blocked:
            if not backlog and self.missed:  # caught up but for a gap at the end: say so
                backlog.append(self.missed)
                self.missed = 0
            if not backlog:
                return
            item = backlog.popleft()
            data = p.frame(p.Missed(rid=self.rid, count=item)) if isinstance(item, int) else self._frames(item)
            if self.conn.push(data):
                self.held -= 0 if isinstance(item, int) else len(item)
            else:
                backlog.appendleft(item)
                self.blocked = True

    def _frames(self, events: list[p.Event]) -> bytes:
        if len(events) <= FRAME_EVENTS:
            return p.frame(p.Events(rid=self.rid, events=events))
        return b"".join(
            p.frame(p.Events(rid=self.rid, events=events[i : i + FRAME_EVENTS]))
            for i in range(0, len(events), FRAME_EVENTS)
        )


class EventBus:
    def __init__(self, buffer: int = 1000) -> None:
        self.buffer = buffer  # [metrics] watch_buffer, for subscribers made from now on
        self.subscribers: list[Sink] = []
        self.active = False  # anyone subscribed: publishers check this before building an event
        self.missed = 0  # events dropped for subscribers that fell behind, all time
        self.pending: list[p.Event] = []  # published, not yet handed to the subscribers
        self._flush: asyncio.TimerHandle | None = None

    def configure(self, buffer: int) -> None:
        """[metrics] watch_buffer: the backlog of each subscriber made from now on."""
        self.buffer = buffer

    def publish(self, ev: p.Event) -> None:
        pending = self.pending
        pending.append(ev)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_DELAY_S, self.flush)
        elif len(pending) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Hand what was published to every subscriber, now."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        batch, self.pending = self.pending, []
        if batch:
            for sub in self.subscribers:
                sub.take(batch)

    def subscribe(self, conn: Pushable, rid: int, agents: Iterable[str], events: Iterable[str]) -> Subscriber:
        sub = Subscriber(self, conn, rid, agents, events, self.buffer)
        self.attach(sub)
        return sub

    def attach(self, sink: Sink) -> None:
        """Hand sink every event published from now on (until unsubscribe)."""
        self.flush()  # what waits happened before this sink began
        self.subscribers.append(sink)
        self.active = True

    def unsubscribe(self, sub: Sink) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        self.active = bool(self.subscribers)
        if not self.active:
            self.flush()  # to nobody: drops what waits, and the timer


MAX_WATCHES = 16  # per connection


def answer(
    bus: EventBus,
    conn: Pushable,
    watches: dict[int, Subscriber],
    req: p.Watch | p.Unwatch,
    known: Callable[[str], bool],
) -> p.Reply:
    """Start or end a watch on conn (whose watches by rid are `watches`); the reply, with the request's rid.

    Runs synchronously on the request's arrival, so the `watching` reply is written before any event.
    """
    if isinstance(req, p.Unwatch):
        sub = watches.pop(req.watch, None)
        if sub is None:
            return p.Error(rid=req.rid, code="bad_request", message=f"no watch with rid {req.watch} on this connection")
        bus.flush()  # the events that happened before the unwatch
        sub.drain()  # what can go out before `unwatched` does; the rest is dropped
        bus.unsubscribe(sub)
        return p.Unwatched(rid=req.rid, watch=req.watch)
    if unknown := [a for a in req.agents if not known(a)]:
        return p.Error(rid=req.rid, code="unknown_agent", message=f"agents: no agent named {unknown[0]!r}")
    if req.rid == 0 or req.rid in watches:
        return p.Error(
            rid=req.rid,
            code="bad_request",
            message=f"rid {req.rid} cannot name a watch: give each watch its own nonzero rid",
        )
    if len(watches) >= MAX_WATCHES:
        return p.Error(rid=req.rid, code="bad_request", message=f"at most {MAX_WATCHES} watches per connection")
    watches[req.rid] = sub = bus.subscribe(conn, req.rid, req.agents, req.events or p.events_known_to(req.protocol))
    return p.Watching(rid=req.rid, buffer=sub.limit)
