"""Messages and receipts between nodes.

Outbound: an agent of another node has a queue here like any agent, served by a ForwardTransport. Its worker
(coordd.delivery) takes the messages in order and the transport publishes them to the owning node's subject
with `Nats-Msg-Id: <this node>:<id>`, returning once JetStream has acknowledged each (PubAck): the message is
then stored as forwarded. While NATS is unreachable the transport is down: the messages stay queued, in order.

Inbound: a durable pull consumer on this node's subject. Each fetched message is committed under a new local
id with its origin ("<node>:<id>", unique in the database): a message JetStream delivers again (its ack was
lost, or this node stopped before acking) is found by its origin and not stored twice. Only after the commit
is it acked to JetStream, then queued like any local message.

Receipts: the delivered, failed, read and acked outcomes of a message that came from another node are
published back to `coordd.node.<origin>.receipts`; the origin applies them to its own row and wakes whoever
waits (`send --wait`, `watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from coordctl import protocol as p
from coordd import schema as s
from coordd.cluster.link import Link, inbox_subject, receipts_subject
from coordd.config import RemoteAgent
from coordd.delivery import Delivery
from coordd.hooks import Hooks, Receipted
from coordd.model import Record, Refused, TransportDown
from coordd.store import Store
from coordd.transports import Transport

log = logging.getLogger("coordd.cluster")

MSG_ID = "Nats-Msg-Id"  # JetStream drops a message whose id it stored within the stream's duplicate window
ORIGIN = "Coordd-Origin"  # "<node>:<id>": the receiver stores a message once per origin, whatever JetStream did
RETRY = "Coordd-Retry"  # a retry of a message forwarded before: its generation (the sender's attempts so far)
PUBACK_TIMEOUT_S = 5.0
FETCH = 1024  # messages (or receipts) fetched at a time
FETCH_WAIT_S = 1.0  # how long a fetch waits on the server for the first message
BUSY_WAIT_S = 0.02  # while messages flow: how long a fetch waits for more


class Wire(msgspec.Struct, array_like=True, omit_defaults=True):
    """A message on its way to another node (array_like: the field names are not sent)."""

    agent: str
    body: str
    priority: str
    created: float
    sender: str | None = None
    kind: str | None = None
    tags: list[str] | None = None
    subject: str | None = None
    group: str | None = None


class Receipt(msgspec.Struct, array_like=True):
    id: int  # the message's id on the node it came from
    point: str  # delivered | failed | read | acked
    at: float
    error: str | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode_wire = msgspec.msgpack.Decoder(Wire).decode
_decode_receipts = msgspec.msgpack.Decoder(list[Receipt]).decode
Retry = Callable[[int], Awaitable[object]]  # RetryCancel.retry: a failed message stored here back to its queue
RECEIPTS_PER_MSG = 512  # receipts for one node travel together, up to this many in one NATS message


class ForwardTransport(Transport):
    name = "remote"
    max_batch = 1024
    forwards = True

    def __init__(self, agent: RemoteAgent, link: Link) -> None:
        self.agent = agent
        self.link = link
        self.subject = inbox_subject(agent.node)
        self.prefix = f"{link.config.node}:"

    def health(self) -> str | None:
        return self.link.down_reason()

    async def deliver(self, messages: list[Record]) -> None:
        js = self.link.js
        if js is None or not self.link.connected:
            raise TransportDown(self.link.down_reason() or "NATS unreachable")
        acks = []
        try:
            for rec in messages:  # published in order, acknowledged together: one round trip for the chunk
                wire = Wire(
                    agent=rec.agent,
                    body=rec.body,
                    priority=rec.priority,
                    created=rec.created,
                    sender=rec.sender,
                    kind=rec.kind,
                    tags=list(rec.tags) if rec.tags else None,
                    subject=rec.subject,
                    group=rec.group,
                )
                origin = f"{self.prefix}{rec.id}"
                headers = {MSG_ID: origin, ORIGIN: origin}
                if rec.attempts:  # retried after its node failed it (a forward is an attempt): a new id, retried there
                    headers[MSG_ID] = f"{origin}+{rec.attempts}"
                    headers[RETRY] = str(rec.attempts)
                acks.append(await js.publish_async(self.subject, _encode(wire), headers=headers))
        except Exception as e:  # the connection went away while publishing: those acked so far are forwarded
            raise TransportDown(f"forwarding to node {self.agent.node}: {e or type(e).__name__}") from None
        # Acknowledged in order; the connection lost meanwhile ends the wait at once (the acks would never come).
        lost = asyncio.ensure_future(self.link.lost.wait())
        try:
            for i, ack in enumerate(acks):
                done, _ = await asyncio.wait((ack, lost), timeout=PUBACK_TIMEOUT_S, return_when=FIRST_COMPLETED)
                if ack not in done or ack.exception() is not None:  # published again later: JetStream drops a copy
                    reason = "no acknowledgement from JetStream" if ack not in done else str(ack.exception())
                    for late in acks[i:]:
                        late.cancel()
                    raise TransportDown(f"forwarding to node {self.agent.node}: {reason}", delivered=i)
        finally:
            lost.cancel()


async def _consume(link: Link, subject: str, durable: str, handle: Callable) -> None:
    """Fetch from a durable pull consumer forever, handing each batch to `handle`; waits while NATS is away.

    Deliveries lost on the way (the server that carried them went away) show as a gap in the consumer's
    sequence: the batch after it is not handled (JetStream would redeliver the lost ones only after ack_wait,
    behind it) and the consumer is made again, so the lost ones come again, in order."""
    sub: JetStreamContext.PullSubscription | None = None
    busy = False
    expected = 0  # the consumer sequence the next delivery must have (0: none yet, the consumer is made first)
    while True:
        await link.up.wait()
        try:
            if sub is None:
                sub, expected = await _subscribe(link, subject, durable, reset=expected != 0)
            # nats-py's fetch(n) takes what is there at once, but with nothing there it waits for all n (or its
            # timeout): so a long poll asks for one message, which it returns as soon as it comes, and while
            # messages flow a short fetch takes up to FETCH of them.
            msgs = await (sub.fetch(FETCH, timeout=BUSY_WAIT_S) if busy else sub.fetch(1, timeout=FETCH_WAIT_S))
            busy = True
        except (TimeoutError, NatsTimeout):
            busy = False
            continue  # nothing came: fetch again (a long poll on the server, not a sleep)
        except Exception as e:  # NATS away, or the consumer not there yet: wait until connected again
            log.debug("fetch on %s: %s", subject, e)
            if link.connected:
                await asyncio.sleep(0.25)  # noqa: sleep-ok: a failing fetch while connected is retried at a pace
            continue
        first = msgs[0].metadata.sequence.consumer
        seqs = [m.metadata.sequence.consumer for m in msgs]
        if first != expected or seqs != list(range(first, first + len(msgs))):
            log.warning("deliveries on %s were lost on the way: fetching again all that is not acked", subject)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            sub = None  # made again (expected is not 0: so it starts over from what is not acked)
            continue
        expected = first + len(msgs)
        try:
            await handle(msgs)
        except Exception as e:  # an ack lost with the connection: JetStream delivers it again, found stored
            log.debug("handling a batch from %s: %s", subject, e)


async def _subscribe(
    link: Link, subject: str, durable: str, reset: bool = False
) -> tuple[JetStreamContext.PullSubscription, int]:
    """The durable consumer, from where this node left it. Messages a previous run of this node fetched and
    never acked (it stopped between the fetch and the commit) JetStream would redeliver only after ack_wait,
    behind newer ones: so at start (and with `reset`, after deliveries were lost) the consumer is made again,
    and everything not acked (what the work-queue stream still holds for it) comes again in the subject's
    order (those already stored are found by their origin). Also the consumer sequence its next delivery will have."""
    js, stream = link.js, link.config.stream
    assert js is not None
    try:
        info = await js.consumer_info(stream, durable)
        if reset or info.num_ack_pending:  # the stream is a work queue: what it holds for us is what is not acked
            await js.delete_consumer(stream, durable)
    except NotFoundError:
        pass
    config = ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,  # a work queue's consumer acks each message (then JetStream drops it)
        ack_wait=30.0,
        max_ack_pending=4 * FETCH,
        deliver_policy=DeliverPolicy.ALL,
    )
    sub = await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
    info = await js.consumer_info(stream, durable)  # nothing is fetched yet: its count of deliveries is still
    return sub, (info.delivered.consumer_seq if info.delivered else 0) + 1


class _Consumer:
    """A durable pull consumer of one of this node's subjects, whose batches `take` commits, then acks."""

    subject = staticmethod(inbox_subject)
    durable = "in"

    def __init__(self, link: Link, store: Store, delivery: Delivery, hooks: Hooks) -> None:
        self.link = link
        self.store = store
        self.delivery = delivery
        self.hooks = hooks

    async def run(self) -> None:
        me = self.link.config.node
        await _consume(self.link, self.subject(me), f"coordd-{self.durable}-{me}", self.take)

    async def take(self, msgs: list[Msg]) -> None:
        raise NotImplementedError


class Inbound(_Consumer):
    """This node's subject: messages other nodes forwarded to its agents. A message stored here already comes
    again as a retry (its sender retried it after it failed here): it is retried here, as a local retry."""

    def __init__(
        self, link: Link, store: Store, delivery: Delivery, hooks: Hooks, retry: Retry, outbox: Outbox
    ) -> None:
        super().__init__(link, store, delivery, hooks)
        self.retry = retry
        self.outbox = outbox

    async def take(self, msgs: list[Msg]) -> None:
        fresh: list[Record] = []
        origins: list[tuple[str, int]] = []
        retried: list[tuple[str, int]] = []
        seen: set[str] = set()
        now = time.time()
        for msg in msgs:
            headers = msg.headers or {}
            origin = headers.get(ORIGIN)
            if origin is None or origin in seen:
                continue
            if (stored := self.store.find_origin(origin)) is not None:  # acked below, once more
                if RETRY in headers:  # else JetStream delivered it again
                    retried.append((origin, stored))
                continue
            try:
                w = _decode_wire(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                log.error("dropping an undecodable message %s from NATS: %s", origin, e)
                continue
            seen.add(origin)
            rec = Record(
                id=0,
                agent=w.agent,
                body=w.body,
                priority=w.priority,
                created=now,
                sender=w.sender,
                kind=w.kind,
                tags=w.tags,
                subject=w.subject,
                group=w.group,
                origin=origin,
            )
            fresh.append(rec)
        if fresh:
            for message_id, rec in enumerate(fresh, self.store.allocate_ids(len(fresh))):
                rec.id = message_id
                origins.append((rec.origin or "", message_id))
            try:
                await self.store.insert(fresh, also=[(s.SET_ORIGIN, origins, True)])
            except Exception as e:  # not stored: not acked, so JetStream delivers them again
                log.error("could not store %d messages from other nodes: %s", len(fresh), e)
                return
            self.hooks.accepted(fresh)
            for rec in fresh:
                self.delivery.enqueue(rec)
        for origin, message_id in retried:
            if not await self._retry(origin, message_id):
                return  # not stored: not acked, so JetStream delivers it again
        for msg in msgs:  # only now: each is in the database (an ack lost here: delivered again, found stored)
            await msg.ack()

    async def _retry(self, origin: str, message_id: int) -> bool:
        """Requeue a message that failed here (a local retry: only a failed one, so the same retry coming again
        changes nothing). One that cannot be (cancelled here, its agent gone) fails again for its sender, which
        waits for an outcome. False: the database refused the write."""
        try:
            await self.retry(message_id)
        except Refused as e:
            if e.code in ("storage_full", "storage_error"):
                log.error("could not retry message %d (%s) from another node: %s", message_id, origin, e)
                return False
            found = self.store.load_record(message_id)
            status = found[1] if found is not None else None
            if status not in ("queued", "delivered"):  # else retried already: its outcome goes back as it comes
                error = "cancelled on its node" if status == "cancelled" else e.message
                self.outbox.add(origin, "failed", time.time(), error)
        return True


class Outbox:
    """Receipts for other nodes, published in order and kept while NATS is away. Each one JetStream takes is
    marked in its message's row (`receipted`); at start, those not marked are published again (`replay`)."""

    def __init__(self, link: Link, store: Store) -> None:
        self.link = link
        self.store = store
        self.pending: list[tuple[str, Receipt]] = []  # (origin "<node>:<id>", receipt)
        self.wakeup = asyncio.Event()

    def add(self, origin: str, point: str, at: float, error: str | None = None) -> None:
        origin_id = origin.rpartition(":")[2]
        self.pending.append((origin, Receipt(id=int(origin_id), point=point, at=at, error=error)))
        self.wakeup.set()

    def replay(self) -> None:
        """The receipts a previous run owed (it stopped before JetStream took them), in order."""
        for origin, status, delivered, error, read_at, acked_at, done in self.store.receipts_owed():
            if not done & 1:
                if status == "delivered":
                    self.add(origin, "delivered", delivered)
                else:
                    self.add(origin, "failed", time.time(), error or f"{status} on its node")
            if read_at is not None and not done & 2:
                self.add(origin, "read", read_at)
            if acked_at is not None and not done & 4:
                self.add(origin, "acked", acked_at)

    async def run(self) -> None:
        self.replay()
        while True:
            await self.wakeup.wait()
            await self.link.up.wait()
            batch, self.pending = self.pending, []
            self.wakeup.clear()
            # A receipt goes out once the outcome it reports is stored here (delivery outcomes are deferred
            # writes): a sender told "delivered" may at once read the recipient's inbox on this node.
            await self.store.written()
            try:
                await self._publish(batch)
            except Exception as e:  # NATS went away: published again once it is back (JetStream drops duplicates)
                log.debug("publishing receipts: %s", e)
                self.pending[:0] = batch
                self.wakeup.set()
                if self.link.connected:
                    await asyncio.sleep(0.25)  # noqa: sleep-ok: a failing publish while connected is retried at a pace
                continue
            done = [(s.RECEIPT_BITS[r.point], origin) for origin, r in batch]
            self.store.write([(s.MARK_RECEIPTED, done, True)], deferred=True)  # lost in a crash: sent again, dropped

    async def _publish(self, batch: list[tuple[str, Receipt]]) -> None:
        """One NATS message per node and run of receipts, in order. Its id names the run (the same run published
        again is dropped by JetStream; a run cut differently is applied again, which changes nothing)."""
        js = self.link.js
        assert js is not None
        by_node: dict[str, list[Receipt]] = {}
        for origin, r in batch:
            by_node.setdefault(origin.rpartition(":")[0], []).append(r)
        acks = []
        for node, receipts in by_node.items():
            for i in range(0, len(receipts), RECEIPTS_PER_MSG):
                run = receipts[i : i + RECEIPTS_PER_MSG]
                first, last = run[0], run[-1]
                # (with the last one's time: the outcome of a retry is a new receipt, not a copy of the last one)
                msg_id = f"{self.link.config.node}>{node}:{first.id}.{first.point}-{last.id}.{last.point}:{len(run)}"
                msg_id += f"@{last.at!r}"
                acks.append(await js.publish_async(receipts_subject(node), _encode(run), headers={MSG_ID: msg_id}))
        await asyncio.wait_for(asyncio.gather(*acks), PUBACK_TIMEOUT_S)


class ReceiptHooks(Hooks):
    """The daemon's hooks, and a receipt for each outcome of a message another node forwarded here."""

    def __init__(self, inner: Hooks, outbox: Outbox, store: Store) -> None:
        self.inner = inner
        self.outbox = outbox
        self.store = store

    def __getattribute__(self, name: str):
        # Every hook not overridden here is the inner one's, as it is (status and metrics read through it too).
        if name in _OWN:
            return object.__getattribute__(self, name)
        return getattr(object.__getattribute__(self, "inner"), name)

    def delivered(self, agent: str, recs: list[Record], finished: float) -> None:
        self.inner.delivered(agent, recs, finished)
        for rec in recs:
            if rec.origin is not None:
                self.outbox.add(rec.origin, "delivered", finished)

    def failed(self, agent: str, rec: Record, error: str) -> None:
        self.inner.failed(agent, rec, error)
        if rec.origin is not None:
            self.outbox.add(rec.origin, "failed", time.time(), error)

    def cancelled(self, rec: Record) -> None:
        self.inner.cancelled(rec)
        if rec.origin is not None:  # cancelled here: for its sender, it failed
            self.outbox.add(rec.origin, "failed", time.time(), "cancelled on its node")

    def read(self, agent: str, msgs: list[Receipted], at: float) -> None:
        self.inner.read(agent, msgs, at)
        self._receipts(msgs, "read", at)

    def acked(self, agent: str, msgs: list[Receipted], at: float) -> None:
        self.inner.acked(agent, msgs, at)
        self._receipts(msgs, "acked", at)

    def _receipts(self, msgs: list[Receipted], point: str, at: float) -> None:
        for origin in self.store.origins([m[0] for m in msgs]).values():
            self.outbox.add(origin, point, at)


_OWN = {"inner", "outbox", "store", "delivered", "failed", "cancelled", "read", "acked", "_receipts"}


class Receipts(_Consumer):
    """This node's receipts subject: the outcomes of the messages it forwarded, applied to its rows."""

    subject = staticmethod(receipts_subject)
    durable = "receipts"

    async def take(self, msgs: list[Msg]) -> None:
        receipts: list[Receipt] = []
        for msg in msgs:
            try:
                receipts += _decode_receipts(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                log.error("dropping an undecodable receipt from NATS: %s", e)
        by_point: dict[str, list[tuple]] = {}
        for r in receipts:
            by_point.setdefault(r.point, []).append((r.error, r.id) if r.point == "failed" else (r.at, r.id))
        ops: s.Write = [(APPLY[point], rows, True) for point, rows in by_point.items() if point in APPLY]
        try:
            await self.store.write(ops)
        except Exception as e:  # not stored: not acked, so JetStream delivers them again
            log.error("could not store %d receipts from other nodes: %s", len(receipts), e)
            return
        for msg in msgs:
            await msg.ack()
        records = self.store.load_records([r.id for r in receipts])
        for r in receipts:
            if (rec := records.get(r.id)) is not None:  # else pruned meanwhile
                self._tell(r, rec)

    def _tell(self, r: Receipt, rec: Record) -> None:
        """Whoever waits for the outcome or the receipt hears it now that it is stored; `watch` shows it."""
        if r.point == "delivered":
            self.hooks.delivered(rec.agent, [rec], r.at)
            self.delivery.settle(r.id, "delivered")
        elif r.point == "failed":
            self.hooks.failed(rec.agent, rec, r.error or "failed on its node")
            self.delivery.settle(r.id, "failed", r.error)
        else:
            msgs: list[Receipted] = [(rec.id, rec.sender, rec.priority)]  # type: ignore[list-item]
            (self.hooks.read if r.point == "read" else self.hooks.acked)(rec.agent, msgs, r.at)
            self.delivery.receipted([r.id], r.point)


# How each receipt updates the origin's row (only a row still queued takes an outcome: a receipt may come twice).
APPLY = {"delivered": s.REMOTE_DELIVERED, "failed": s.REMOTE_FAILED, "read": s.MARK_READ, "acked": s.MARK_ACKED}


def wake_forwarders(delivery: Delivery) -> None:
    """NATS is back: the queues of remote agents deliver now, not at their next health recheck."""
    for q in delivery.queues.values():
        if q.transport is not None and q.transport.forwards and q.down is not None:
            q.resume_at, q.recheck_ms = 0.0, 0
            q.wakeup.set()


def backlog(delivery: Delivery) -> int:
    return sum(q.depth() for q in delivery.queues.values() if q.transport is not None and q.transport.forwards)


def status(link: Link, nodes: list[p.NodeSeen], refused: dict[str, str], delivery: Delivery) -> p.ClusterStatus:
    return p.ClusterStatus(
        node=link.config.node,
        connected=link.connected,
        since=link.since,
        server=link.server(),
        error=link.error,
        backlog=backlog(delivery),
        nodes=nodes,
        refused=[f"{agent} (node {node})" for agent, node in sorted(refused.items())],
    )
