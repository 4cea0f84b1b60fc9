"""retry and cancel: a failed message goes back to its queue; a queued one leaves it for good.

Both change the stored status first and memory (the queues, the waiters) only
once that is committed, so a refusal for storage changes nothing.
"""

from __future__ import annotations

from coordctl import protocol as p
from coordd import schema as s
from coordd.config import Config
from coordd.delivery import Delivery
from coordd.hooks import NO_HOOKS, Hooks
from coordd.model import Record, Refused
from coordd.queries import status_of
from coordd.store import StorageError, StorageFull, Store


class RetryCancel:
    def __init__(self, config: Config, store: Store, delivery: Delivery, observer: Hooks = NO_HOOKS) -> None:
        self.store = store
        self.delivery = delivery
        self.observer = observer
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.agents = {a.id for a in config.agents}

    async def retry(self, message_id: int) -> p.Sent:
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

    async def cancel(self, message_id: int) -> p.Sent:
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

    async def _write(self, message_id: int, ops: s.Write) -> None:
        await write_or_refuse(self.store, ops, message_id)


async def write_or_refuse(
    store: Store, ops: s.Write, message_id: int | None = None, bounce: Record | None = None
) -> None:
    """Commit a change a request asked for now (with the bounce it causes, if any), or refuse the request
    (storage_full, storage_error)."""
    try:
        await (store.write(ops) if bounce is None else store.insert([bounce], also=ops))
    except StorageFull as e:
        raise Refused(
            "storage_full",
            f"the disk holding {store.path} is full ({e}); nothing changed: free some space there and retry",
            message_id,
        ) from None
    except StorageError as e:
        raise Refused("storage_error", f"the database refused the write ({e}); nothing changed", message_id) from None
