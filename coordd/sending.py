"""send, batch and broadcast: validated whole, admitted, committed, then queued; and `wait` for the outcome.

A send is acknowledged only once its row is committed; only then does it join its
agent's queue. Nothing of a batch is stored unless every message of it is valid.

A large batch (over CHUNK messages) is checked, stored and queued a chunk per turn of
the loop, so that the other clients are served in between; it stays all or nothing
(Store.exclusive: the other writes wait for it).
"""

from __future__ import annotations

import asyncio
import time

from coordctl import protocol as p
from coordd.admission import Admission
from coordd.config import Config
from coordd.delivery import Delivery, held_sizes
from coordd.groups import Groups
from coordd.hooks import NO_HOOKS, Hooks
from coordd.model import Record, Refused
from coordd.queries import status_of
from coordd.store import StorageError, StorageFull, Store
from coordd.turns import in_turns, next_turn
from coordd.validation import all_valid, check_message, check_not_empty, check_wait_timeout, no_group

# Messages of a large batch handled per turn of the event loop (checked, stored, queued), so that the other
# clients are served in between: a turn costs 10-15 ms here. Up to this many, a batch is handled in one
# turn as a send is. A batch stays all or nothing either way (Store.exclusive).
CHUNK = 1000


class Sending:
    def __init__(
        self,
        config: Config,
        store: Store,
        delivery: Delivery,
        admission: Admission,
        groups: Groups,
        observer: Hooks = NO_HOOKS,
    ) -> None:
        self.store = store
        self.delivery = delivery
        self.admission = admission
        self.picker = groups  # which member of a group gets a message sent to "@NAME"
        self.observer = observer
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.agents = {a.id: a for a in config.agents}
        self.picker.configure(config)
        self.groups = self.picker.members  # group -> its members, in config order

    async def send(self, req: p.Send) -> p.Sent:
        msg = p.NewMessage(
            to=req.to,
            body=req.body,
            sender=req.sender,
            priority=req.priority,
            kind=req.kind,
            tags=tuple(req.tags) if req.tags else (),
            key=req.key,
            reply_to=req.reply_to,
            subject=req.subject,
        )
        check_wait_timeout(req)
        [message_id], stored = await self._accept([msg], where="")
        if req.wait:
            timeout = req.timeout or self.config.daemon.wait_timeout_s
            if req.wait_for == "delivered":
                return await self._await_outcome(message_id, timeout)
            return await self._await_receipt(message_id, req.wait_for, timeout)
        down = self.delivery.unreachable(req.to)  # what its worker knows: no probe on the send path
        return p.Sent(id=message_id, duplicate=not stored, healthy=down is None, reason=down)

    async def reply(self, req: p.ReplyRequest) -> p.Sent:
        """A message to the sender of message `req.message_id`, from its recipient unless `req.sender` says."""
        found = self.store.reply_target(req.message_id)
        if found is None:
            raise Refused("unknown_message", _no_message(req.message_id, "nothing was sent"), req.message_id)
        recipient, sender, _, subject = found
        if sender is None:
            raise Refused(
                "bad_state",
                f"message {req.message_id} has no sender, so a reply has no one to go to: "
                f"send to an agent with reply_to={req.message_id} instead",
                req.message_id,
            )
        if sender not in self.agents:
            raise Refused(
                "unknown_agent",
                f"message {req.message_id} is from {sender!r}, which is not a configured agent, so a reply has "
                f"nowhere to go: send to an agent with reply_to={req.message_id} instead",
                req.message_id,
            )
        send = p.Send(
            to=sender, body=req.body, sender=req.sender or recipient, reply_to=req.message_id, subject=subject
        )
        return await self.send(send)

    async def resend(self, req: p.Resend) -> p.Sent:
        """A new copy of message `req.message_id`, whatever its status, sent as a send is (checked, admitted,
        queued) to the same recipient (not to its group again), with resent_from set and no idempotency key."""
        found = self.store.load_record(req.message_id)
        if found is None:
            raise Refused("unknown_message", _no_message(req.message_id, "nothing was sent"), req.message_id)
        rec = found[0]
        if rec.agent not in self.agents:
            raise Refused(
                "unknown_agent",
                f"message {req.message_id} is for {rec.agent!r}, which is no longer configured: nothing was sent",
                req.message_id,
            )
        # In the original's thread, if the message it answered is still there (retention may have pruned it).
        reply_to = rec.reply_to if rec.reply_to is not None and self.store.reply_target(rec.reply_to) else None
        msg = p.NewMessage(
            to=rec.agent,
            body=rec.body,
            sender=rec.sender,
            priority=rec.priority,  # type: ignore[arg-type]  # a stored priority is a p.Priority
            kind=rec.kind,
            tags=tuple(rec.tags or ()),
            reply_to=reply_to,
            subject=rec.subject,
        )
        [message_id], _ = await self._accept([msg], where="", resent_from=req.message_id)
        down = self.delivery.unreachable(rec.agent)
        return p.Sent(id=message_id, healthy=down is None, reason=down)

    async def broadcast(self, req: p.Broadcast) -> list[int]:
        if req.group is None:
            targets = list(self.agents)
        elif req.group in self.groups:
            targets = self.groups[req.group]
        else:
            raise Refused("unknown_group", f"group: {no_group(req.group, self.groups)}")
        if not req.include_sender and req.sender in targets:  # it wrote the message: it needs no copy
            targets = [t for t in targets if t != req.sender]
            if not targets:
                return []
        tags = tuple(req.tags)
        msgs = [
            p.NewMessage(
                to=t,
                body=req.body,
                sender=req.sender,
                priority=req.priority,
                kind=req.kind,
                tags=tags,
                key=req.key,
                subject=req.subject,
            )
            for t in targets
        ]
        return (await self._accept(msgs, where="", copies=True))[0]

    async def batch(self, req: p.Batch) -> list[int]:
        return (await self._accept(req.messages, where="messages"))[0]

    async def _accept(
        self, msgs: list[p.NewMessage], where: str, copies: bool = False, resent_from: int | None = None
    ) -> tuple[list[int], int]:
        """Validate all, then store the new ones in one transaction: (ids in input order, how many were new).

        A message whose idempotency key is already known gets the first message's
        id and stores nothing. Nothing is stored unless every message is valid.
        With `copies` (a broadcast) each message's key is the broadcast's: its copy
        is stored with the key `p.broadcast_key(key, recipient)`.
        """
        check_not_empty(msgs, where)
        entries: list[int | Record] = []
        fresh: list[Record] = []
        by_key: dict[str, Record] = {}
        waits: list[asyncio.Future] = []
        per_agent: dict[str, int] = {}  # new messages by agent
        now = time.time()
        control_chars = self.config.daemon.control_chars
        valid = False  # every message of the chunk passes check_message (all_valid): none needs a check of its own
        for i, m in enumerate(msgs):
            if not i % CHUNK:
                if i:  # a large batch: the other clients are served between chunks
                    await next_turn()
                valid = all_valid(msgs[i : i + CHUNK], self.agents, control_chars, self.groups)
            if not valid:  # one of them fails: check each in turn, so the error names the first one
                check_message(m, self.agents, control_chars, _place(where, i), self.groups)
            key = p.broadcast_key(m.key, m.to) if copies and m.key is not None else m.key
            if key is not None:
                prefix = _place(where, i)
                known = self.admission.known_key(key, m, by_key, waits, prefix)
                if known is None and copies and m.key is not None:
                    known = self.store.find_legacy_copy(m.key, m.to)
                if known is not None:
                    entries.append(known)
                    continue
            thread = self._thread_of(m.reply_to, _place(where, i)) if m.reply_to is not None else 0
            # A message to a group: picked after the key is looked up, so a send retried with its key picks no
            # second member.
            group, agent = (m.to, self.picker.pick(m.to[1:], per_agent)) if m.to not in self.agents else (None, m.to)
            rec = Record(
                id=0,
                agent=agent,
                body=m.body,
                priority=m.priority,
                created=now,
                sender=m.sender,
                kind=m.kind,
                tags=m.tags or None,
                key=key,
                reply_to=m.reply_to,
                thread=thread,
                subject=m.subject,
                group=group,
                resent_from=resent_from,
            )
            fresh.append(rec)
            entries.append(rec)
            per_agent[agent] = per_agent.get(agent, 0) + 1
            if key is not None:
                by_key[key] = rec
        size = held_sizes(fresh)  # what the new bodies will hold
        self.admission.check_limits(len(fresh), per_agent, size, self.config.queue)
        for message_id, rec in enumerate(fresh, self.store.allocate_ids(len(fresh))):
            rec.id = message_id
        if waits:  # a key still being committed by another request: answer once it is stored
            await asyncio.gather(*waits, return_exceptions=True)
        if fresh:
            await self._commit(fresh, size, per_agent, by_key)
        return [e if isinstance(e, int) else e.id for e in entries], len(fresh)

    def _thread_of(self, reply_to: int, where: str) -> int:
        """The thread a reply to message `reply_to` joins: that message's."""
        found = self.store.reply_target(reply_to)
        if found is None:
            raise Refused("unknown_message", f"{where}reply_to: " + _no_message(reply_to, "nothing was sent"), reply_to)
        return found[2]

    async def _commit(
        self, fresh: list[Record], size: int, per_agent: dict[str, int], by_key: dict[str, Record]
    ) -> None:
        """Store fresh, their room in the queues reserved meanwhile (Admission); then queue them."""
        large = len(fresh) > CHUNK
        fut = asyncio.get_running_loop().create_future() if large else self.store.insert(fresh)
        self.admission.committing(per_agent, size, by_key, fut)
        try:
            if large:
                await self._commit_large(fresh)
            else:
                await fut
        except StorageFull as e:
            raise Refused(
                "storage_full",
                f"the disk holding {self.store.path} is full, nothing was stored ({e}): "
                "free some space there and retry; coordd goes on by itself",
            ) from None
        except StorageError as e:
            raise Refused(
                "storage_error",
                f"the database refused the write, nothing was stored ({e}); "
                f"check the disk holding {self.store.path} and retry",
            ) from None
        finally:
            if large:
                fut.set_result(None)  # requests waiting for one of its keys go on, whether it was stored or not
            self.admission.committed(per_agent, size, by_key)
        if not large:
            self._queue(fresh)

    async def _commit_large(self, fresh: list[Record]) -> None:
        """Store and queue a large batch a chunk per turn of the loop, as the only writer meanwhile: a write
        that comes in between waits, so it is queued after this batch as its ids say (and committed after:
        the batch stays all or nothing). Until all are queued their room stays reserved twice, which may
        refuse a send meanwhile but never lets a queue past its limit."""
        async with self.store.exclusive():
            await self.store.insert_chunked(fresh, CHUNK)
            async for _, chunk in in_turns(fresh, CHUNK):
                self._queue(chunk)

    def _queue(self, recs: list[Record]) -> None:
        self.observer.accepted(recs)
        if len(recs) == 1:
            self.delivery.enqueue(recs[0])
        else:
            self.delivery.enqueue_all(recs)

    async def _await_outcome(self, message_id: int, timeout: float) -> p.Sent:
        status = status_of(message_id, self.delivery, self.store)
        error = None
        if status not in p.TERMINAL_STATUSES:
            try:
                status, error = await asyncio.wait_for(self.delivery.wait_for(message_id), timeout)
            except TimeoutError:
                raise Refused(
                    "not_delivered",
                    f"message {message_id} was not delivered within {timeout:g} s; "
                    "it stays queued (see `coordctl show`)",
                    message_id,
                ) from None
        if status != "delivered":
            raise Refused(
                "not_delivered", f"message {message_id} is {status}: {error or 'see coordctl show'}", message_id
            )
        return p.Sent(id=message_id, status="delivered")

    async def _await_receipt(self, message_id: int, point: str, timeout: float) -> p.Sent:
        """Wait until the message is delivered, then until its recipient read (or acked) it, `timeout` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent = await self._await_outcome(message_id, timeout)
        # Registered before looking, so a receipt committed after the look still wakes us.
        fut = self.delivery.wait_receipt(message_id, point)
        try:
            while (receipts := self.store.receipts(message_id)) is not None:
                if receipts[0 if point == "read" else 1] is not None:
                    return sent
                left = deadline - loop.time()
                if left <= 0 or self.delivery.stopping:
                    break
                try:
                    await asyncio.wait_for(fut, left)
                except TimeoutError:
                    break
                fut = self.delivery.wait_receipt(message_id, point)  # (the receipt is committed: the look finds it)
        finally:
            self.delivery.drop_waiter(self.delivery.receipt_waiters, (message_id, point), fut)
        raise Refused(
            "timeout",
            f"message {message_id} was delivered but not {point} within {timeout:g} s; it stays in its "
            f"recipient's inbox (`coordctl inbox` fetches it, `coordctl ack` acknowledges it)",
            message_id,
        )


def _place(where: str, i: int) -> str:
    """Where message i of a request is, as an error names it ("messages[3]."; "" for a send's only one). Built
    only for an error, or for a lookup that may raise one: not for every message of a batch."""
    return f"{where}[{i}]." if where else ""


def _no_message(message_id: int, consequence: str) -> str:
    return f"no message {message_id}: it never existed or retention pruned it; {consequence}"
