"""The event bus behind `watch`: what happens to messages, pushed to subscribers as it happens.

Publishing costs nothing while nobody watches: the observer checks `bus.active`
before it builds an event. A subscriber is one `watch` request on one
connection. Its events are written straight to the connection while the
connection's write buffer is under its high-water mark (the client keeps up).
When it is not, they wait in the subscriber's own bounded buffer; once that is
full, further events are only counted, and when the client catches up it gets a
`missed` notice with the count, at the place of the gap. So a slow or stuck
subscriber holds a bounded amount of memory and never holds up delivery, the
senders, or the other subscribers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from coordctl import protocol as p


class Pushable(Protocol):
    """What a subscriber needs of its connection (coordd.server.Connection)."""

    def push(self, data: bytes) -> bool:
        """Write a frame now unless the client is behind; False: not written."""
        ...


class Subscriber:
    def __init__(self, bus: EventBus, conn: Pushable, rid: int, agents: list[str], events: list[str], limit: int) -> None:
        self.bus = bus
        self.conn = conn
        self.rid = rid
        self.agents = frozenset(agents) or None  # None: every agent
        self.events = frozenset(events) or None  # None: every event type
        self.limit = limit
        # Frames not yet written, in order; an int stands for that many events missed at that place.
        self.backlog: deque[bytes | int] = deque()
        self.missed = 0  # missed since the backlog filled up, not yet placed in it

    def wants(self, ev: p.Event) -> bool:
        return (self.agents is None or ev.agent in self.agents) and (self.events is None or ev.event in self.events)

    def offer(self, ev: p.Event) -> None:
        ev.rid = self.rid
        if self.backlog or self.missed:  # behind already: keep the order
            self._hold(ev)
        elif not self.conn.push(data := p.frame(ev)):
            self.backlog.append(data)

    def _hold(self, ev: p.Event) -> None:
        if len(self.backlog) >= self.limit:
            self.missed += 1
            self.bus.missed += 1
            return
        if self.missed:
            self.backlog.append(self.missed)
            self.missed = 0
        self.backlog.append(p.frame(ev))

    def drain(self) -> None:
        """Write what waits, in order, for as long as the client keeps up (on the connection's resume_writing)."""
        backlog, push = self.backlog, self.conn.push
        while backlog:
            item = backlog[0]
            if not push(p.frame(p.Missed(rid=self.rid, count=item)) if isinstance(item, int) else item):
                return
            backlog.popleft()
        if self.missed and push(p.frame(p.Missed(rid=self.rid, count=self.missed))):
            self.missed = 0


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
