"""retry and cancel: a failed message goes back to its queue; a queued one leaves it for good.

Both change the stored status first and memory (the queues, the waiters) only
once that is committed, so a refusal for storage changes nothing.

Their bulk forms (retry_many, cancel_many: every message of one agent, created since a time) work a
chunk of CHUNK messages per commit and per turn of the loop, so other clients are served in between.
A bulk retry reads the failed messages from the database, a chunk at a time (a failed message is in no
queue); a bulk cancel takes the matching messages out of the agent's queue in memory, the one place
that knows which are still queued and not in flight, then stores them cancelled chunk by chunk: a chunk
whose write is refused goes back to the queue, in id order, with every one after it. Retries and
cancels run one at a time (`busy`), so two of them never both act on one message.
"""

from __future__ import annotations

import asyncio
from itertools import chain

from coordctl import protocol as p
from coordd import schema as s
from coordd.config import Config
from coordd.delivery import Delivery
from coordd.hooks import NO_HOOKS, Hooks
from coordd.model import Record, Refused
from coordd.queries import status_of
from coordd.store import StorageError, StorageFull, Store
from coordd.turns import next_turn
from coordd.validation import check_agent

CHUNK = 1000  # messages of a bulk retry or cancel per commit (and per turn of the loop)


class RetryCancel:
    def __init__(self, config: Config, store: Store, delivery: Delivery, observer: Hooks = NO_HOOKS) -> None:
        self.store = store
        self.delivery = delivery
        self.observer = observer
        self.busy = asyncio.Lock()  # one retry or cancel at a time: each sees the statuses the last one stored
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.agents = {a.id for a in config.agents}

    async def retry(self, message_id: int) -> p.Sent:
        async with self.busy:
            return await self._retry(message_id)

    async def cancel(self, message_id: int) -> p.Sent:
        async with self.busy:
            return await self._cancel(message_id)

    async def _retry(self, message_id: int) -> p.Sent:
        found = self.store.load_record(message_id)
        if found is None:
            raise Refused("unknown_message", f"no message {message_id}: it never existed or retention pruned it")
        rec, status = found
        if status != "failed":
            now = status_of(message_id, self.delivery, self.store)
            raise Refused("bad_state", f"message {message_id} is {now}; only failed messages can be retried")
        if rec.agent not in self.agents:
            raise Refused("unknown_agent", f"message {message_id} is for {rec.agent!r}, which is no longer configured")
        await self._write(message_id, [(s.MARK_REQUEUED, (message_id,), False)])
        rec.error = None
        self.observer.retried(rec.agent, rec, None, None)
        self.delivery.enqueue(rec)
        down = self.delivery.unreachable(rec.agent)
        return p.Sent(id=message_id, status="queued", healthy=down is None, reason=down)

    async def _cancel(self, message_id: int) -> p.Sent:
        found = self.store.load_record(message_id)
        if found is None:
            raise Refused("unknown_message", f"no message {message_id}: it never existed or retention pruned it")
        rec, status = found
        q = self.delivery.queue_of(rec.agent)  # an orphaned queue too: a re-added agent must not get it
        # (A pull agent's message whose lease ran out is back in its queue but stored delivered: not cancelled.)
        queued = q.remove(message_id) if q is not None and status == "queued" else None
        orphan = rec.agent not in self.agents and status == "queued" and not self.delivery.in_flight(message_id)
        if queued is None and not orphan:
            now = status_of(message_id, self.delivery, self.store)
            raise Refused("bad_state", f"message {message_id} is {now}; only queued messages can be cancelled")
        bounce = self.delivery.bounce(rec, None)  # stored with the cancel: both or neither
        try:
            await write_or_refuse(self.store, [(s.MARK_CANCELLED, (message_id,), False)], message_id, bounce)
        except Refused:
            if q is not None and queued is not None:
                q.put_back([queued])
            raise
        if q is not None and queued is not None:
            q.release([queued])
        self.delivery.drop_unacked(rec.agent, 1)
        self.delivery.settle(message_id, "cancelled")
        self.observer.cancelled(rec)
        if bounce is not None:
            self.delivery.bounced(bounce)
        return p.Sent(id=message_id, status="cancelled")

    async def retry_many(self, req: p.RetryMany) -> p.Count:
        """Every failed message of req.agent created since req.since goes back to its queue, in id order."""
        if req.status != "failed":
            raise Refused("bad_request", f"status: only failed messages can be retried, not {req.status} ones")
        check_agent(req.agent, self.agents, ())  # (an agent no longer configured has nowhere to send them)
        since = req.since if req.since is not None else float("-inf")
        async with self.busy:
            if req.dry_run:
                return p.Count(count=await self.store.count_failed(req.agent, since))
            done, after = 0, -1
            while chunk := self.store.failed_chunk(req.agent, since, after, CHUNK):
                after = chunk[-1].id
                try:
                    await write_or_refuse(self.store, [(s.MARK_REQUEUED_FAILED, [(r.id,) for r in chunk], True)])
                except Refused as e:
                    raise _partly(e, done, "retried") from None
                for rec in chunk:
                    rec.error = None
                    self.observer.retried(rec.agent, rec, None, None)
                    self.delivery.enqueue(rec)
                done += len(chunk)
                await next_turn()
            return p.Count(count=done)

    async def cancel_many(self, req: p.CancelMany) -> p.Count:
        """Every message still queued for req.agent, created since req.since, is cancelled."""
        if req.status != "queued":
            raise Refused("bad_request", f"status: only queued messages can be cancelled, not {req.status} ones")
        check_agent(req.agent, self.agents, self.delivery.orphans)
        since = req.since if req.since is not None else float("-inf")
        async with self.busy:
            q = self.delivery.queue_of(req.agent)
            if q is None:
                return p.Count(count=0)
            # (A pull agent's message put back by a lease that ran out is stored delivered: not cancelled.)
            if req.dry_run:
                return p.Count(count=sum(1 for r in chain(q.urgent, q.regular) if _cancellable(r, since, q.returned)))
            taken = q.take_where(lambda r: _cancellable(r, since, q.returned))
            taken.sort(key=lambda r: r.id)
            for start in range(0, len(taken), CHUNK):
                chunk = taken[start : start + CHUNK]
                bounces = [b for b in (self.delivery.bounce(r, None) for r in chunk) if b is not None]
                try:
                    await write_or_refuse(
                        self.store, [(s.MARK_CANCELLED, [(r.id,) for r in chunk], True)], None, bounces
                    )
                except Refused as e:
                    q.merge_back(taken[start:])
                    raise _partly(e, start, "cancelled") from None
                q.release(chunk)
                self.delivery.drop_unacked(req.agent, len(chunk))
                for rec in chunk:
                    self.delivery.settle(rec.id, "cancelled")
                    self.observer.cancelled(rec)
                for b in bounces:
                    self.delivery.bounced(b)
                await next_turn()
            return p.Count(count=len(taken))

    async def _write(self, message_id: int, ops: s.Write) -> None:
        await write_or_refuse(self.store, ops, message_id)


def _cancellable(rec: Record, since: float, returned: set[int]) -> bool:
    return rec.created >= since and rec.id not in returned


def _partly(e: Refused, done: int, what: str) -> Refused:
    """A bulk request's refusal, saying how many it had done before (those stay done)."""
    return Refused(e.code, f"{e.message}; {done} messages were {what} before that, the rest were not")


async def write_or_refuse(
    store: Store, ops: s.Write, message_id: int | None = None, bounce: Record | list[Record] | None = None
) -> None:
    """Commit a change a request asked for now (with the bounces it causes, if any), or refuse the request
    (storage_full, storage_error)."""
    bounces = [bounce] if isinstance(bounce, Record) else bounce
    try:
        await (store.insert(bounces, also=ops) if bounces else store.write(ops))
    except StorageFull as e:
        raise Refused(
            "storage_full",
            f"the disk holding {store.path} is full ({e}); nothing changed: free some space there and retry",
            message_id,
        ) from None
    except StorageError as e:
        raise Refused("storage_error", f"the database refused the write ({e}); nothing changed", message_id) from None
