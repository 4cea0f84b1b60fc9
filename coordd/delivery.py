"""Per-agent queues and the workers that drain them.

Each agent has one worker task, so one agent's messages go out one call at a
time, in order: urgent first, then regular, FIFO within each. Different agents'
workers run concurrently, except that transports naming the same `exclusive`
resource take turns on one lock. A worker never sleeps: it waits on its queue's
`wakeup` event, with a deadline when it is backing off after a failure or
waiting for a down transport to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable

from coordd import schema as s
from coordd.config import Delivery as DeliveryConfig
from coordd.hooks import NO_HOOKS, Hooks
from coordd.model import DeliveryError, Record, TransportDown
from coordd.store import Store
from coordd.transports import Transport
from coordd.turns import next_turn

log = logging.getLogger("coordd.delivery")


def held_size(body: str) -> int:
    """The memory a queued message's body holds: what queue.max_bytes bounds (O(1), unlike encoding it)."""
    return sys.getsizeof(body)


class AgentQueue:
    def __init__(self, agent_id: str, transport: Transport | None) -> None:
        self.id = agent_id
        self.transport = transport  # None while the agent is not configured (its queue is orphaned)
        self.urgent: deque[Record] = deque()
        self.regular: deque[Record] = deque()
        self.in_flight: list[Record] = []
        self.held = 0  # bytes its messages' bodies hold, from push until release (waiting and in flight)
        self.wakeup = asyncio.Event()
        self.resume_at = 0.0  # loop time before which the worker must not deliver (backoff)
        self.down: str | None = None  # why the transport is down, while it is
        self.last_error: str | None = None
        self.task: asyncio.Task | None = None  # the worker
        self.busy = asyncio.Lock()  # held by the worker for each delivery call
        self.retired = False  # the agent left the config: the worker stops after its delivery in progress

    def __len__(self) -> int:
        """Messages waiting to be taken (not counting those in flight)."""
        return len(self.urgent) + len(self.regular)

    def transport_name(self) -> str:
        return self.transport.name if self.transport is not None else "none"

    def depth(self) -> int:
        """Messages not yet delivered: waiting plus in flight. Queue limits count these."""
        return len(self) + len(self.in_flight)

    def push(self, rec: Record) -> None:
        (self.urgent if rec.priority == "urgent" else self.regular).append(rec)
        self.held += held_size(rec.body)
        self.wakeup.set()

    def release(self, recs: list[Record]) -> None:
        """recs are finished (delivered, failed or cancelled): the queue no longer holds their bodies.
        (take, put_back and remove leave `held` alone: a message in flight, or being cancelled, is still held.)"""
        self.held -= sum(held_size(rec.body) for rec in recs)

    def take(self, n: int) -> list[Record]:
        """The next n messages of the highest non-empty priority, in order."""
        q = self.urgent or self.regular
        return [q.popleft() for _ in range(min(n, len(q)))]

    def put_back(self, recs: list[Record]) -> None:
        """Return untried or retried messages to the head of their queue, keeping their order."""
        for rec in reversed(recs):
            (self.urgent if rec.priority == "urgent" else self.regular).appendleft(rec)

    def remove(self, message_id: int) -> Record | None:
        for q in (self.urgent, self.regular):
            for rec in q:
                if rec.id == message_id:
                    q.remove(rec)
                    return rec
        return None

    def oldest_created(self) -> float | None:
        heads = [q[0].created for q in (self.urgent, self.regular) if q]
        heads += [r.created for r in self.in_flight]
        return min(heads) if heads else None


class Delivery:
    def __init__(
        self,
        config: DeliveryConfig,
        store: Store,
        transports: dict[str, Transport],
        spawn: Callable[..., asyncio.Task],
        observer: Hooks = NO_HOOKS,
    ) -> None:
        self.config = config
        self.store = store
        self.spawn = spawn  # spawn(coroutine, name) -> Task, in the daemon's task group
        self.observer = observer  # metrics and watch events
        self.queues = {agent_id: AgentQueue(agent_id, t) for agent_id, t in transports.items()}
        # Queued messages of agents no longer configured, kept in order (and in the database) for
        # when the agent comes back. A reload moves queues between the two dicts.
        self.orphans: dict[str, AgentQueue] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.waiters: dict[int, list[asyncio.Future]] = {}
        # Requests waiting past delivery: a sender for a message's read or acked receipt (by (id, point)), an
        # inbox request for the next message an agent gets (by agent). Both empty unless someone waits.
        self.receipt_waiters: dict[tuple[int, str], list[asyncio.Future]] = {}
        self.arrivals: dict[str, list[asyncio.Future]] = {}
        self.unrecorded: set[int] = set()  # delivered or failed, outcome not yet committed
        # Each agent's messages not acknowledged yet, queued or delivered: a group's least-loaded pick reads it.
        # Seeded at start (seed_unacked), then kept in step: enqueue adds, an ack, a failure or a cancel takes away.
        self.unacked: dict[str, int] = {}
        self.stopping = False

    def start(self) -> None:
        """A worker for each agent's queue."""
        for q in self.queues.values():
            self._start_worker(q)

    def _start_worker(self, q: AgentQueue) -> None:
        q.task = self.spawn(self.worker(q), f"deliver:{q.id}")

    # --- what a reload changes (coordd.reload); none of these awaits, so a request sees one config -----

    def configure(self, config: DeliveryConfig, agents: list[str]) -> None:
        """The [delivery] settings, and the configured agents in config order (their queues exist by now)."""
        self.config = config
        self.queues = {agent_id: self.queues[agent_id] for agent_id in agents}

    def retire(self, agent_id: str) -> None:
        """The agent left the config: its worker stops after its delivery in progress, whose transport is then
        closed; its messages stay queued (orphaned) for when it comes back."""
        q = self.queues.pop(agent_id)
        old, q.transport = q.transport, None
        q.retired = True
        q.wakeup.set()  # the worker leaves its wait and exits
        self.orphans[agent_id] = q
        self._close_after_delivery(q, old)

    def replace_transport(self, agent_id: str, transport: Transport) -> None:
        """The agent's transport changed: the new one takes the next delivery, the old one closes after the
        delivery in progress."""
        q = self.queues[agent_id]
        old, q.transport = q.transport, transport
        if old is not None:
            transport.take_over(old)
        q.down = None
        q.resume_at = 0.0  # a new transport gets a try at once, not after the old one's backoff
        q.wakeup.set()
        self._close_after_delivery(q, old)

    def add(self, agent_id: str, transport: Transport) -> None:
        """A new agent; one configured before gets back its orphaned messages, in their order."""
        q = self.orphans.pop(agent_id, None)
        if q is None:
            q = AgentQueue(agent_id, transport)
        else:
            q.transport, q.retired, q.down, q.resume_at = transport, False, None, 0.0
            q.wakeup.set()
        self.queues[agent_id] = q
        if q.task is None or q.task.done():  # else the retired worker had not exited yet, and carries on
            self._start_worker(q)

    def _close_after_delivery(self, q: AgentQueue, transport: Transport | None) -> None:
        if transport is not None:
            self.spawn(_close_when_idle(q, transport), f"close:{q.id}")

    def workers(self) -> list[asyncio.Task]:
        """The workers still running."""
        return [q.task for q in self.all_queues() if q.task is not None and not q.task.done()]

    def transports(self) -> list[Transport]:
        """The transports in use, each once (to close at the end)."""
        return list({id(q.transport): q.transport for q in self.all_queues() if q.transport}.values())

    # --- what the request handlers use -----------------------------------------

    def queued(self) -> int:
        return sum(q.depth() for q in self.queues.values())

    def held(self) -> int:
        """Bytes the bodies of all undelivered messages hold, orphaned ones too."""
        return sum(q.held for q in self.all_queues())

    def enqueue(self, rec: Record) -> None:
        q = self.queue_of(rec.agent)
        if q is None:  # its agent left the config before this start
            q = self.orphans[rec.agent] = AgentQueue(rec.agent, None)
        q.push(rec)
        self.unacked[rec.agent] = self.unacked.get(rec.agent, 0) + 1

    def seed_unacked(self, delivered: dict[str, int]) -> None:
        """At start, once the queued messages are enqueued (which counted them): the delivered ones not acked."""
        for agent, n in delivered.items():
            self.unacked[agent] = self.unacked.get(agent, 0) + n

    def drop_unacked(self, agent: str, n: int) -> None:
        """n of agent's messages no longer wait for its ack: acknowledged, failed or cancelled."""
        # Never below 0: a message acknowledged while still queued that fails later is taken away twice.
        self.unacked[agent] = max(0, self.unacked.get(agent, 0) - n)

    def queue_of(self, agent: str) -> AgentQueue | None:
        q = self.queues.get(agent)
        return q if q is not None else self.orphans.get(agent)

    def all_queues(self) -> list[AgentQueue]:
        return [*self.queues.values(), *self.orphans.values()]

    def orphaned(self) -> dict[str, int]:
        """Messages still queued for agents no longer configured, by agent."""
        return {q.id: q.depth() for q in self.orphans.values() if q.depth()}

    def in_flight(self, message_id: int) -> bool:
        if message_id in self.unrecorded:
            return True
        return any(r.id == message_id for q in self.all_queues() for r in q.in_flight)

    def wait_for(self, message_id: int) -> asyncio.Future:
        """A future resolved with (status, error) once the message is delivered, failed or cancelled."""
        fut = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(message_id, []).append(fut)
        return fut

    def settle(self, message_id: int, status: str, error: str | None = None) -> None:
        for fut in self.waiters.pop(message_id, ()):
            if not fut.done():
                fut.set_result((status, error))

    def wait_receipt(self, message_id: int, point: str) -> asyncio.Future:
        """A future resolved once `receipted(ids, point)` names the message (or at shutdown); drop it after."""
        return _waiter(self.receipt_waiters, (message_id, point))

    def receipted(self, ids: list[int], point: str) -> None:
        """The messages' `point` receipt (read or acked) is committed."""
        if self.receipt_waiters:
            for message_id in ids:
                _wake(self.receipt_waiters.pop((message_id, point), ()))

    def wait_arrival(self, agent: str) -> asyncio.Future:
        """A future resolved once a delivery to `agent` is recorded (or at shutdown); drop it after."""
        return _waiter(self.arrivals, agent)

    @staticmethod
    def drop_waiter(waiters: dict, key: object, fut: asyncio.Future) -> None:
        """Forget a waiter that gave up (timed out): a receipt that never comes must not keep it."""
        futs = waiters.get(key)
        if futs is not None and fut in futs:
            futs.remove(fut)
            if not futs:
                del waiters[key]

    # --- the workers -------------------------------------------------------------

    async def worker(self, q: AgentQueue) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping and not q.retired:
            q.wakeup.clear()
            delay = q.resume_at - loop.time()
            if not q or delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(q.wakeup.wait(), delay if q and delay > 0 else None)
                continue
            transport = q.transport
            assert transport is not None  # a worker's queue has one until retire(), which ends the worker
            # A queue that is down stays down until a delivery gets through (_deliver clears it), not merely until
            # health() finds nothing wrong: a transport that learns it is down only by trying (a tmux pane that
            # runs a shell) would otherwise show up, and be picked for a group's message, at every recheck.
            if reason := transport.health():
                q.down = reason
                q.resume_at = loop.time() + self.config.unhealthy_recheck_ms / 1000
                continue
            async with q.busy:
                if q and not (q.retired or self.stopping):  # either may have changed while waiting for the lock
                    await self._deliver(q, loop)
            # One chunk per turn of the loop: sends, and other agents, get their turn in between.
            await next_turn()

    async def _deliver(self, q: AgentQueue, loop: asyncio.AbstractEventLoop) -> None:
        transport = q.transport  # a reload may swap q.transport; this call finishes on the one it started with
        assert transport is not None  # the worker checked q.retired under q.busy: only retire() clears it
        batch = q.take(transport.max_batch)
        q.in_flight = batch
        self.observer.delivering(q.id, batch)
        started = time.time()
        lock = self.locks.setdefault(transport.exclusive, asyncio.Lock()) if transport.exclusive else None
        try:
            async with lock or contextlib.nullcontext():
                await transport.deliver(batch)
            done, error = len(batch), None
            q.down = None
        except DeliveryError as e:
            done, error = e.delivered, e.reason
            q.down = None  # it is up: this message failed, to be retried
        except TransportDown as e:
            q.in_flight = []
            q.put_back(batch[e.delivered :])
            q.down = e.reason
            q.resume_at = loop.time() + self.config.unhealthy_recheck_ms / 1000
            if e.delivered:
                self._record(q, batch[: e.delivered], e.delivered, None, started, loop)
            return
        except Exception as e:  # a transport bug must not kill the worker: count it as a failed attempt
            log.exception("transport %s failed on agent %s", transport.name, q.id)
            done, error = 0, f"internal error: {e!r}"
        q.in_flight = []
        self._record(q, batch, done, error, started, loop)

    def _record(self, q, batch: list[Record], done: int, error: str | None, started: float, loop) -> None:
        finished = time.time()
        attempts, delivered = [], []
        for rec in batch[:done]:
            rec.attempts += 1
            attempts.append((rec.id, rec.attempts, started, finished, 1, None))
            delivered.append((finished, rec.attempts, rec.id))
        ops: s.Write = [(s.INSERT_ATTEMPT, attempts, True), (s.MARK_DELIVERED, delivered, True)]
        outcomes: list[tuple[int, str, str | None]] = [(rec.id, "delivered", None) for rec in batch[:done]]
        if done:
            q.release(batch[:done])
            self.observer.delivered(q.id, batch[:done], finished)
        if error is not None:
            rec = batch[done]
            rec.attempts += 1
            rec.tries += 1
            rec.error = q.last_error = error
            ops.append((s.INSERT_ATTEMPT, (rec.id, rec.attempts, started, finished, 0, error), False))
            if rec.tries >= self.config.max_attempts:
                log.warning("message %d to %s failed after %d attempts: %s", rec.id, q.id, rec.tries, error)
                ops.append((s.MARK_FAILED, (rec.attempts, error, rec.id), False))
                outcomes.append((rec.id, "failed", error))
                q.release([rec])
                self.drop_unacked(q.id, 1)
                q.put_back(batch[done + 1 :])
                self.observer.failed(q.id, rec, error)
            else:
                ops.append((s.MARK_ATTEMPTED, (rec.attempts, error, rec.id), False))
                q.put_back(batch[done:])
                backoff = self.config.backoff_initial_ms * 2 ** (rec.tries - 1)
                q.resume_at = loop.time() + min(backoff, self.config.backoff_max_ms) / 1000
                self.observer.retried(q.id, rec, error, min(backoff, self.config.backoff_max_ms) / 1000)
        # Outcomes are bookkeeping: they commit in their own transaction, shortly, so that no
        # send's acknowledgement waits behind them. Until then the messages show as delivering,
        # and waiters hear the outcome only once it is stored.
        for message_id, _, _ in outcomes:
            self.unrecorded.add(message_id)
        waited_on = any(message_id in self.waiters for message_id, _, _ in outcomes)  # then commit now
        self.store.write(ops, deferred=not waited_on).add_done_callback(lambda f: self._recorded(f, outcomes, q.id))

    def _recorded(self, fut: asyncio.Future, outcomes: list[tuple[int, str, str | None]], agent: str) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            # The delivery happened but its outcome is not stored: the message stays
            # queued in the database and is delivered again after a restart (at-least-once).
            log.error("could not record a delivery outcome: %s", fut.exception())
        for message_id, status, error in outcomes:
            self.unrecorded.discard(message_id)
            self.settle(message_id, status, error)
        if agent in self.arrivals and any(status == "delivered" for _, status, _ in outcomes):
            _wake(self.arrivals.pop(agent))

    def stop(self) -> None:
        """Start no new deliveries; the ones in progress finish. Waiters hear the message is still queued."""
        self.stopping = True
        for q in self.all_queues():
            q.wakeup.set()
        for waiters in self.waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(("queued", "the daemon is shutting down"))
        for futs in (*self.receipt_waiters.values(), *self.arrivals.values()):
            _wake(futs)  # they look again, find nothing new, and answer


def _waiter(waiters: dict, key: object) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    waiters.setdefault(key, []).append(fut)
    return fut


def _wake(futs) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_result(None)


async def _close_when_idle(q: AgentQueue, transport: Transport) -> None:
    async with q.busy:  # the delivery in progress, if any, ran on `transport`: let it finish
        pass
    try:
        await transport.close()
    except Exception:
        log.exception("closing the replaced %s transport of %s failed", transport.name, q.id)
