"""A pull agent's fetch: the inbox request delivers its queued messages by returning them, each under a lease.

The messages come from the agent's queue in memory (coordd.delivery: no worker drains a pull
agent's queue), urgent first, then in id order, as a push agent's worker would deliver them.
One write marks them delivered and read (the first fetch), counts the fetch as an attempt,
and stores the lease's end (with `ack`, acknowledges them instead); only once it is committed
are they returned. Until acknowledged they stay in the queue's `leased`; when the lease ends
unacknowledged, delivery puts them back in the queue and a later fetch returns them again,
`fetches` one higher. A restart leases them again until the end stored (Delivery.restore_lease).
"""

from __future__ import annotations

import time

from coordctl import protocol as p
from coordd import schema as s
from coordd.delivery import AgentQueue, Delivery
from coordd.hooks import NO_HOOKS, Hooks, Receipted
from coordd.model import Record, Refused
from coordd.retry_cancel import write_or_refuse
from coordd.store import Store


class Fetches:
    def __init__(self, store: Store, delivery: Delivery, lease_s: float, observer: Hooks = NO_HOOKS) -> None:
        self.store = store
        self.delivery = delivery
        self.lease_s = lease_s  # [pull] lease_s; a reload sets it again
        self.observer = observer

    async def fetch(self, q: AgentQueue, limit: int, max_bytes: int, ack: bool) -> list[p.MessageInfo]:
        """Deliver the next messages of a pull agent's queue (the caller holds the agent's fetch lock)."""
        recs = q.take_fetch(limit, max_bytes)
        if not recs:
            return []
        now = time.time()
        until = None if ack else now + self.lease_s
        acked = now if ack else None
        fetched, attempts = [], []
        for rec in recs:
            number = rec.attempts + 1
            fetched.append((now, number, rec.fetches + 1, until, acked, rec.id))
            attempts.append((rec.id, number, now, now, 1, None))
        try:
            await write_or_refuse(self.store, [(s.MARK_FETCHED, fetched, True), (s.INSERT_ATTEMPT, attempts, True)])
        except Refused:
            q.unfetch(recs)  # not delivered: fetched again next time, as if this fetch never happened
            raise
        first: list[Receipted] = []
        for rec in recs:
            rec.attempts += 1
            rec.fetches += 1
            if rec.read_at is None:
                rec.read_at = now
                first.append(_receipted(rec))  # (a read event once, at the first fetch)
        self.delivery.fetched(q, recs, until)
        self.observer.delivered(q.id, recs, now)
        ids = [rec.id for rec in recs]
        self.delivery.receipted(ids, "read")
        if first:
            self.observer.read(q.id, first, now)
        if ack:
            self.delivery.receipted(ids, "acked")
            self.delivery.drop_unacked(q.id, len(recs))
            self.observer.acked(q.id, [_receipted(rec) for rec in recs], now)
        return [_info(rec, now, until, acked) for rec in recs]


def _receipted(rec: Record) -> Receipted:
    return rec.id, rec.sender, rec.priority  # type: ignore[return-value]  # a Record's priority is a p.Priority


def _info(rec: Record, now: float, until: float | None, acked: float | None) -> p.MessageInfo:
    """The message as the fetch stored it (what `get` would answer now), built without reading it back."""
    return p.MessageInfo(
        id=rec.id,
        to=rec.agent,
        body=rec.body,
        status="delivered",
        priority=rec.priority,  # type: ignore[arg-type]
        created=rec.created,
        sender=rec.sender,
        kind=rec.kind or p.DEFAULT_KIND,
        tags=list(rec.tags or ()),
        key=rec.key,
        attempts=rec.attempts,
        delivered=now,
        read_at=rec.read_at,
        acked_at=acked,
        reply_to=rec.reply_to,
        thread=rec.thread or rec.id,
        subject=rec.subject,
        fetches=rec.fetches,
        lease_until=until,
        group=rec.group,
    )
