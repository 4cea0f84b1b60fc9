"""Per-agent queues and the workers that drain them.

Each agent has one worker task, so one agent's messages go out one call at a
time, in order: urgent first, then regular, FIFO within each. Different agents'
workers run concurrently, except that transports naming the same `exclusive`
resource take turns on one lock. A worker never sleeps: it waits on its queue's
`wakeup` event, with a deadline when it is backing off after a failure or
waiting for a down transport to come back.

A transport is down when it fails for a reason that says nothing about the
message (TransportDown: a tmux server or pane missing, no display, a full disk):
its messages stay queued, no attempt is counted, and the worker tries again
after unhealthy_recheck_ms, doubling at each try up to unhealthy_recheck_max_ms,
and at once after a reload. A `held` event tells a watch which messages wait
and why, once per spell (not at each recheck), and for each message sent to
the agent while it stays down.

A paused agent (coordctl pause, coordd.pauses) keeps its queue: its worker waits on `wakeup`
with no deadline until `resume`, or the pause's timer, sets it; a delivery in progress when it
was paused finishes. A paused pull agent's fetches return nothing new (coordd.inbox_requests).

A pull agent's queue has no worker: its messages wait in the queue until the agent
fetches them (coordd.pull takes them). A fetched message is leased, not released: it
stays in `leased` (counted by the queue limits, its body in `held`) until it is
acknowledged, or until its lease ends, when a timer puts it back in the queue, in id
order, to be fetched again. Keeping the backlog in the queue is what lets the queue
limits and queue.max_bytes bound a pull agent as they bound any other, and what lets a
reload between push and pull carry every message over: the queue is the same object.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice
from operator import attrgetter

from coordd import schema as s
from coordd.bounces import notice
from coordd.config import Delivery as DeliveryConfig
from coordd.hooks import NO_HOOKS, Hooks
from coordd.model import DeliveryError, Record, TransportDown
from coordd.store import Store
from coordd.transports import Transport
from coordd.turns import next_turn

log = logging.getLogger("coordd.delivery")

# Successful deliveries recorded by one deferred write at most (its two statements' rows; see _join_outcomes).
OUTCOMES_PER_WRITE = 512


def held_size(body: str) -> int:
    """The memory a queued message's body holds: what queue.max_bytes bounds (O(1), unlike encoding it)."""
    return sys.getsizeof(body)


class Totals:
    """What every queue holds, orphaned ones too, from push until release: messages and their bodies' bytes.
    Kept in step by AgentQueue, so that admitting a send reads two numbers instead of summing every queue."""

    __slots__ = ("bytes", "messages")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0


_BODY = attrgetter("body")


def held_sizes(recs: Iterable[Record]) -> int:
    """held_size of each of recs' bodies, summed (without a Python call for each)."""
    return sum(map(sys.getsizeof, map(_BODY, recs)))


class AgentQueue:
    def __init__(self, agent_id: str, transport: Transport | None, totals: Totals | None = None) -> None:
        self.id = agent_id
        self.totals = totals if totals is not None else Totals()  # the Delivery's, shared by its queues
        self.transport = transport  # None while the agent is not configured (its queue is orphaned)
        self.urgent: deque[Record] = deque()
        self.regular: deque[Record] = deque()
        self.in_flight: list[Record] = []
        self.held = 0  # bytes its messages' bodies hold, from push until release (waiting and in flight)
        self.wakeup = asyncio.Event()
        self.resume_at = 0.0  # loop time before which the worker must not deliver (backoff)
        self.down: str | None = None  # why the transport is down, while it is
        self.down_since: float | None = None  # when it went down (wall clock), while it is
        self.recheck_ms = 0  # while down: how long until the next try (doubles at each try, to a cap)
        self.holding: str | None = None  # why its messages wait, once a `held` event said so; None: they do not
        self.last_error: str | None = None  # the last attempt's error, until a delivery succeeds (history keeps all)
        self.failing: str | None = None  # the last attempt's error, until a delivery succeeds
        self.task: asyncio.Task | None = None  # the worker
        self.busy = asyncio.Lock()  # held by the worker for each delivery call
        self.retired = False  # the agent left the config: the worker stops after its delivery in progress
        # A pull agent's fetched, unacknowledged messages: id -> (lease end, wall clock; 0 while the fetch is
        # being committed), fetch order. `lease_ends` is a heap of (lease end, id), stale entries skipped.
        self.leased: dict[int, tuple[float, Record]] = {}
        self.lease_ends: list[tuple[float, int]] = []
        self.lease_timer: asyncio.TimerHandle | None = None
        self.lease_timer_at = 0.0
        self.returned: set[int] = set()  # ids put back in the queue by a lease that ran out (ack takes them out)
        self.paused: tuple[float, float | None] | None = None  # (since, until: None till resumed), wall clock
        self.pause_timer: asyncio.TimerHandle | None = None  # ends a pause with an `until`

    def __len__(self) -> int:
        """Messages waiting to be taken (not counting those in flight)."""
        return len(self.urgent) + len(self.regular)

    def transport_name(self) -> str:
        return self.transport.name if self.transport is not None else "none"

    @property
    def pull(self) -> bool:
        """Nothing is pushed: the agent fetches (no worker)."""
        return self.transport is not None and self.transport.pull

    def depth(self) -> int:
        """Messages not yet delivered (waiting plus in flight) and those fetched but not acknowledged. Queue
        limits count these."""
        return len(self) + len(self.in_flight) + len(self.leased)

    def push(self, rec: Record) -> None:
        (self.urgent if rec.priority == "urgent" else self.regular).append(rec)
        self.hold(rec)
        self.wakeup.set()

    def hold(self, rec: Record) -> None:
        """rec is the queue's from now on (pushed, or leased at start) until `release`."""
        size = held_size(rec.body)
        self.held += size
        self.totals.messages += 1
        self.totals.bytes += size

    def push_all(self, recs: list[Record]) -> None:
        """push each of recs, in order (a batch's messages for this agent)."""
        if any(rec.priority == "urgent" for rec in recs):
            for rec in recs:
                (self.urgent if rec.priority == "urgent" else self.regular).append(rec)
        else:
            self.regular.extend(recs)
        size = held_sizes(recs)
        self.held += size
        self.totals.messages += len(recs)
        self.totals.bytes += size
        self.wakeup.set()

    def release(self, recs: list[Record]) -> None:
        """recs are finished (delivered, failed or cancelled): the queue no longer holds their bodies.
        (take, put_back and remove leave `held` alone: a message in flight, or being cancelled, is still held.)"""
        size = held_sizes(recs)
        self.held -= size
        self.totals.messages -= len(recs)
        self.totals.bytes -= size

    def head(self, n: int) -> list[Record]:
        """The messages the next take(n) would return, left in the queue."""
        return list(islice(self.urgent or self.regular, n))

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

    def pause_reason(self) -> str | None:
        """Why nothing is delivered to this agent though it may be up ("paused until 12:30:00"); None: not
        paused. (What a `held` event, or a send's reply, says.)"""
        if self.paused is None:
            return None
        since, until = self.paused
        return f"paused until {_clock(until)}" if until is not None else f"paused since {_clock(since)} until resumed"

    def oldest_created(self) -> float | None:
        heads = [q[0].created for q in (self.urgent, self.regular) if q]
        heads += [r.created for r in self.in_flight]
        return min(heads) if heads else None

    def oldest_unacked(self) -> float | None:
        """When the oldest message of the backlog (queued, in flight, or leased and not acked) was created."""
        oldest = self.oldest_created()
        leased = min((rec.created for _, rec in self.leased.values()), default=None)
        return oldest if leased is None else leased if oldest is None else min(oldest, leased)

    # --- a pull agent's fetches and leases (coordd.pull) --------------------------------

    def take_fetch(self, limit: int, max_bytes: int) -> list[Record]:
        """The next messages a fetch delivers: urgent first, then regular, in id order within each, at most
        `limit`, stopping once the bodies pass max_bytes (at least one). They are leased from now on (the
        lease's end is set once the fetch is committed: `leases_start`)."""
        recs: list[Record] = []
        size = 0
        for q in (self.urgent, self.regular):
            while q and len(recs) < limit:
                size += len(q[0].body) * 4 + 1024  # at most 4 bytes a character, and the fields around the body
                if size > max_bytes and recs:
                    break
                recs.append(q.popleft())
        for rec in recs:
            self.leased[rec.id] = (0.0, rec)
        if self.returned:
            self.returned.difference_update(rec.id for rec in recs)
        return recs

    def unfetch(self, recs: list[Record]) -> None:
        """The fetch was not committed: the messages go back to the head of the queue, unleased."""
        for rec in recs:
            del self.leased[rec.id]
        self.put_back(recs)
        self.returned.update(rec.id for rec in recs if rec.fetches)  # fetched before: ack may take them out

    def leases_start(self, recs: list[Record], until: float) -> None:
        for rec in recs:
            self.leased[rec.id] = (until, rec)
            heapq.heappush(self.lease_ends, (until, rec.id))
        if len(self.lease_ends) > 2 * len(self.leased) + 64:  # acked leases leave stale entries: drop them
            self.lease_ends = [(u, i) for i, (u, _) in self.leased.items() if u]
            heapq.heapify(self.lease_ends)

    def unlease(self, ids: list[int]) -> list[Record]:
        """The messages are acknowledged: they leave the queue for good (leased, or put back by a lease that
        ran out), their bodies released. Returns those it held."""
        done = []
        for i in ids:
            entry = self.leased.pop(i, None)
            if entry is not None:
                done.append(entry[1])
            elif i in self.returned:
                self.returned.discard(i)
                rec = self.remove(i)
                if rec is not None:
                    done.append(rec)
        self.release(done)
        return done

    def expire(self, now: float) -> list[Record]:
        """Leases ended by now: their messages go back to the queue, merged in id order. Returns them."""
        ends, expired = self.lease_ends, []
        while ends and ends[0][0] <= now:
            until, i = heapq.heappop(ends)
            entry = self.leased.get(i)
            if entry is not None and entry[0] == until:  # else acked, or leased again since
                del self.leased[i]
                expired.append(entry[1])
        if expired:
            self.merge_back(expired)
            self.returned.update(rec.id for rec in expired)
        return expired

    def merge_back(self, recs: list[Record]) -> None:
        """Put messages taken out of the queue back in it, each in its place by id (queues are in id order)."""
        recs = sorted(recs, key=_by_id)
        for urgent in (True, False):
            back = [rec for rec in recs if (rec.priority == "urgent") == urgent]
            if back:
                q = self.urgent if urgent else self.regular
                merged = deque(heapq.merge(back, q, key=_by_id))
                if urgent:
                    self.urgent = merged
                else:
                    self.regular = merged

    def take_where(self, keep: Callable[[Record], bool]) -> list[Record]:
        """Take every waiting message for which `keep` is true out of the queue (none in flight), in one pass."""
        taken: list[Record] = []
        for urgent in (True, False):
            q = self.urgent if urgent else self.regular
            left: deque[Record] = deque()
            for rec in q:
                (taken if keep(rec) else left).append(rec)
            if urgent:
                self.urgent = left
            else:
                self.regular = left
        return taken

    def next_lease_end(self) -> float | None:
        ends = self.lease_ends
        while ends and self.leased.get(ends[0][1], (None,))[0] != ends[0][0]:
            heapq.heappop(ends)  # stale: acked, or leased again since
        return ends[0][0] if ends else None


def _by_id(rec: Record) -> int:
    return rec.id


def _clock(t: float) -> str:
    """Local time of day, with the date unless it is within the next or last 12 hours."""
    return time.strftime("%H:%M:%S" if abs(t - time.time()) < 43200 else "%Y-%m-%d %H:%M", time.localtime(t))


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
        self.totals = Totals()  # what all the queues hold (admission's limits)
        self.queues = {agent_id: AgentQueue(agent_id, t, self.totals) for agent_id, t in transports.items()}
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
        # The deferred write that successful deliveries' outcomes join while it waits, last, to be committed: its
        # attempt rows, its delivered rows, its future. One statement each per commit instead of two a delivery.
        self._outcomes: tuple[list, list, asyncio.Future] | None = None
        # Each agent's messages not acknowledged yet, queued or delivered: a group's least-loaded pick reads it.
        # Seeded at start (seed_unacked), then kept in step: enqueue adds, an ack, a failure or a cancel takes away.
        self.unacked: dict[str, int] = {}
        self.stopping = False

    def start(self) -> None:
        """A worker for each agent's queue."""
        for q in self.queues.values():
            self._start_worker(q)

    def _start_worker(self, q: AgentQueue) -> None:
        if not q.pull:  # a pull agent's messages wait for its fetches
            q.task = self.spawn(self.worker(q), f"deliver:{q.id}")

    # --- what a reload changes (coordd.reload); none of these awaits, so a request sees one config -----

    def configure(self, config: DeliveryConfig, agents: list[str]) -> None:
        """The [delivery] settings, and the configured agents in config order (their queues exist by now)."""
        self.config = config
        self.queues = {agent_id: self.queues[agent_id] for agent_id in agents}
        for q in self.queues.values():
            if q.down is not None:  # the reload may be the fix: try again now, the backoff starting over
                q.resume_at, q.recheck_ms = 0.0, 0
                q.wakeup.set()

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
        _up(q)
        q.failing = None
        q.resume_at = 0.0  # a new transport gets a try at once, not after the old one's backoff
        q.wakeup.set()  # a worker whose agent now pulls exits
        if q.task is None or q.task.done():  # pull to push: a worker again
            self._start_worker(q)
        self._close_after_delivery(q, old)

    def add(self, agent_id: str, transport: Transport) -> None:
        """A new agent; one configured before gets back its orphaned messages, in their order."""
        q = self.orphans.pop(agent_id, None)
        if q is None:
            q = AgentQueue(agent_id, transport, self.totals)
        else:
            q.transport, q.retired, q.failing, q.resume_at = transport, False, None, 0.0
            _up(q)
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
        return self.totals.bytes

    def enqueue(self, rec: Record) -> None:
        q = self.queue_of(rec.agent)
        if q is None:  # its agent left the config before this start
            q = self.orphans[rec.agent] = AgentQueue(rec.agent, None, self.totals)
        q.push(rec)
        if q.holding is not None:  # it waits with the others: say so now, as `held`
            self.observer.held(q.id, [rec], q.holding)
        self.unacked[rec.agent] = self.unacked.get(rec.agent, 0) + 1
        if self.arrivals and rec.agent in self.arrivals and q.pull:  # a pull agent's long-poll can fetch it now
            _wake(self.arrivals.pop(rec.agent))

    def enqueue_all(self, recs: list[Record]) -> None:
        """enqueue each of recs (a batch), in order, a queue at a time: each agent's messages keep their order."""
        by_agent: dict[str, list[Record]] = {}
        for rec in recs:
            mine = by_agent.get(rec.agent)
            if mine is None:
                by_agent[rec.agent] = [rec]
            else:
                mine.append(rec)
        for agent, mine in by_agent.items():
            q = self.queue_of(agent)
            if q is None:
                q = self.orphans[agent] = AgentQueue(agent, None)
            q.push_all(mine)
            if q.holding is not None:
                self.observer.held(q.id, mine, q.holding)
            self.unacked[agent] = self.unacked.get(agent, 0) + len(mine)
            if self.arrivals and agent in self.arrivals and q.pull:
                _wake(self.arrivals.pop(agent))

    def restore_lease(self, rec: Record, until: float) -> None:
        """At start: a message a pull agent fetched and had not acknowledged is leased until `until` again."""
        q = self.queue_of(rec.agent)
        if q is None:
            q = self.orphans[rec.agent] = AgentQueue(rec.agent, None, self.totals)
        q.hold(rec)
        q.leased[rec.id] = (0.0, rec)
        self.fetched(q, [rec], until)

    def fetched(self, q: AgentQueue, recs: list[Record], until: float | None) -> None:
        """A fetch of recs (taken by q.take_fetch) is committed: they are leased until `until`, or with None
        acknowledged already, so released. Senders waiting for their delivery hear it."""
        if until is None:
            q.unlease([rec.id for rec in recs])
        else:
            q.leases_start(recs, until)
            if q.lease_timer is None or until < q.lease_timer_at:
                self._arm(q)
        if self.waiters:
            for rec in recs:
                self.settle(rec.id, "delivered")

    def acked(self, agent: str, ids: list[int]) -> None:
        """The agent acknowledged these messages: any of them leased (or put back by a lease that ran out)
        leave its queue for good."""
        q = self.queue_of(agent)
        if q is not None and (q.leased or q.returned):
            q.unlease(ids)
            if q.lease_timer is not None and not q.leased:
                self._arm(q)

    def _arm(self, q: AgentQueue) -> None:
        """Set q's lease timer to the first lease end, if any (a timer, not a loop: nothing runs meanwhile)."""
        if q.lease_timer is not None:
            q.lease_timer.cancel()
            q.lease_timer = None
        at = q.next_lease_end()
        if at is not None and not self.stopping:
            q.lease_timer_at = at
            q.lease_timer = asyncio.get_running_loop().call_later(max(0.0, at - time.time()), self._expire, q)

    def _expire(self, q: AgentQueue) -> None:
        """Leases ended: their messages can be fetched again (a waiting fetch is woken), or pushed, if the
        agent no longer pulls."""
        q.lease_timer = None
        if q.expire(time.time()):
            q.wakeup.set()
            if q.id in self.arrivals:
                _wake(self.arrivals.pop(q.id))
        self._arm(q)

    # --- pauses (coordd.pauses stores them; these change memory only) ------------------------

    def pause(self, agent: str, since: float, until: float | None) -> None:
        """Hold `agent`'s deliveries (it may be paused already: the new pause replaces the old); `until` (wall
        clock) ends the pause by itself, by a timer."""
        q = self.queue_of(agent)
        if q is None:  # at start, paused but not configured any more: kept with its orphaned queue
            q = self.orphans[agent] = AgentQueue(agent, None, self.totals)
        if q.pause_timer is not None:
            q.pause_timer.cancel()
            q.pause_timer = None
        q.paused = (since, until)
        if until is not None and not self.stopping:
            delay = max(0.0, until - time.time())
            q.pause_timer = asyncio.get_running_loop().call_later(delay, self._pause_ended, q, until)

    def resume(self, agent: str) -> bool:
        """Deliver `agent`'s messages again; False if it was not paused."""
        q = self.queue_of(agent)
        if q is None or q.paused is None:
            return False
        if q.pause_timer is not None:
            q.pause_timer.cancel()
            q.pause_timer = None
        q.paused = None
        q.holding = None  # (a `held` said it was paused: if it is down, the next probe says so)
        q.wakeup.set()  # its worker delivers what waited, in order
        if q.pull and q and q.id in self.arrivals:  # a waiting fetch takes it now
            _wake(self.arrivals.pop(q.id))
        return True

    def _pause_ended(self, q: AgentQueue, until: float) -> None:
        q.pause_timer = None
        if q.paused is not None and q.paused[1] == until and self.resume(q.id):
            # Its row goes too (a row whose `until` has passed is dropped at start anyway, should this fail).
            fut = self.store.write([(s.PAUSE_ENDED, (q.id, until), False)], deferred=True)
            fut.add_done_callback(_log_failure)

    def unreachable(self, agent: str) -> str | None:
        """Why `agent` cannot be reached now, as its worker last found (no probe here: this is on every send's
        path): its transport reports itself down, or its last attempt failed and it waits to try again. None:
        reachable as far as coordd knows (an agent not tried yet, too)."""
        q = self.queues.get(agent)
        if q is None:
            return None
        if q.down is not None:
            return q.down
        if q.paused is not None:
            return q.pause_reason()
        return None if q.failing is None else f"its last delivery attempt failed: {q.failing}"

    def bounce(self, rec: Record, error: str | None) -> Record | None:
        """The bounce (coordd.bounces) telling rec's sender that rec failed with `error` (None: it was
        cancelled), or None: bounces are off, or rec's sender is not a configured agent (a bounce has none).
        The caller stores it in the transaction that records the outcome, then hands it to `bounced`."""
        if not self.config.bounce or rec.sender not in self.queues:
            return None
        return notice(rec, error, self.store.allocate_ids(1), time.time())

    def bounced(self, bounce: Record) -> None:
        """A bounce is committed: it is accepted (counted, watched) and queued like a sent message."""
        self.observer.accepted([bounce])
        self.enqueue(bounce)

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
        while not self.stopping and not q.retired and not q.pull:
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
            if q.paused is not None:  # coordctl pause: `resume` or the pause's timer sets wakeup
                self._hold(q, q.pause_reason() or "paused", q.head(transport.max_batch))
                await q.wakeup.wait()
                continue
            if reason := transport.health():
                self._down(q, reason, q.head(transport.max_batch), loop)
                continue
            async with q.busy:
                if q and not (q.retired or self.stopping):  # either may have changed while waiting for the lock
                    await self._deliver(q, loop)
            # One chunk per turn of the loop: sends, and other agents, get their turn in between.
            await next_turn()
        if q.pull and q and q.id in self.arrivals:  # its agent pulls now: a waiting fetch takes what is left
            _wake(self.arrivals.pop(q.id))

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
            _up(q)
        except DeliveryError as e:
            done, error = e.delivered, e.reason
            _up(q)  # it is up: this message failed, to be retried
        except TransportDown as e:
            q.in_flight = []
            q.put_back(batch[e.delivered :])
            self._down(q, e.reason, q.head(transport.max_batch), loop)  # those untried, and any sent meanwhile
            if e.delivered:
                self._record(q, batch[: e.delivered], e.delivered, None, started, loop)
            return
        except Exception as e:  # a transport bug must not kill the worker: count it as a failed attempt
            log.exception("transport %s failed on agent %s", transport.name, q.id)
            done, error = 0, f"internal error: {e!r}"
        q.in_flight = []
        self._record(q, batch, done, error, started, loop)

    def _down(self, q: AgentQueue, reason: str, waiting: list[Record], loop: asyncio.AbstractEventLoop) -> None:
        """q's transport cannot deliver now, for `reason`: its messages wait, and it is tried again after
        unhealthy_recheck_ms, doubling at each try up to unhealthy_recheck_max_ms (a reload tries at once)."""
        if q.down is None:
            q.down_since = time.time()
        first, cap = self.config.unhealthy_recheck_ms, self.config.unhealthy_recheck_max_ms
        q.recheck_ms = min(q.recheck_ms * 2, cap) if q.recheck_ms else first
        q.down = reason
        q.resume_at = loop.time() + q.recheck_ms / 1000
        self._hold(q, reason, waiting)

    def _hold(self, q: AgentQueue, reason: str, waiting: list[Record]) -> None:
        """q's messages wait, for `reason` (its transport is down; a paused agent's would say so). The one place
        `held` events come from: for `waiting` (those it was about to deliver) when the wait starts, not at each
        recheck; enqueue adds one for each message sent meanwhile. A delivery that goes through ends it (_up)."""
        if q.holding is None:
            self.observer.held(q.id, waiting, reason)
        q.holding = reason

    def _record(self, q, batch: list[Record], done: int, error: str | None, started: float, loop) -> None:
        finished = time.time()
        attempts, delivered = [], []
        for rec in batch[:done]:
            rec.attempts += 1
            attempts.append((rec.id, rec.attempts, started, finished, 1, None))
            delivered.append((finished, rec.attempts, rec.id))
        # Forwarded to another node (coordd.cluster): stored as forwarded; its outcome comes with that node's receipt.
        forwards = q.transport is not None and q.transport.forwards
        ops: s.Write = [
            (s.INSERT_ATTEMPT, attempts, True),
            (s.MARK_FORWARDED if forwards else s.MARK_DELIVERED, delivered, True),
        ]
        outcomes: list[tuple[int, str, str | None]] = (
            [] if forwards else [(r.id, "delivered", None) for r in batch[:done]]
        )
        bounce = None
        if done:
            q.failing = q.last_error = None
            q.release(batch[:done])
            if not forwards:
                self.observer.delivered(q.id, batch[:done], finished)
        if error is not None:
            rec = batch[done]
            rec.attempts += 1
            rec.tries += 1
            rec.error = q.last_error = q.failing = error
            ops.append((s.INSERT_ATTEMPT, (rec.id, rec.attempts, started, finished, 0, error), False))
            if rec.tries >= self.config.max_attempts:
                log.warning("message %d to %s failed after %d attempts: %s", rec.id, q.id, rec.tries, error)
                ops.append((s.MARK_FAILED, (rec.attempts, error, rec.id), False))
                outcomes.append((rec.id, "failed", error))
                bounce = self.bounce(rec, error)
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
        # and waiters hear the outcome only once it is stored. A bounce commits with the failure
        # it reports: both or neither, so a crash can neither lose it nor send it twice.
        for message_id, _, _ in outcomes:
            self.unrecorded.add(message_id)
        waited_on = any(message_id in self.waiters for message_id, _, _ in outcomes)  # then commit now
        # All delivered (not forwarded: those stay queued until their receipt): they join the outcomes waiting,
        # if those are last.
        if len(ops) == 2 and not waited_on and not forwards:
            fut = self._join_outcomes(attempts, delivered)
        elif bounce is None:
            fut = self.store.write(ops, deferred=not waited_on)
        else:
            fut = self.store.insert([bounce], also=ops, deferred=not waited_on)
        fut.add_done_callback(lambda f: self._recorded(f, outcomes, q.id, bounce))

    def _join_outcomes(self, attempts: list, delivered: list) -> asyncio.Future:
        """Record successful deliveries with the deferred write of those before them while it is the last one
        waiting (so that it commits them in the order they came), else in a new one."""
        pending = self._outcomes
        if pending is not None and len(pending[0]) < OUTCOMES_PER_WRITE and self.store.last_deferred(pending[2]):
            pending[0].extend(attempts)
            pending[1].extend(delivered)
            return pending[2]
        fut = self.store.write([(s.INSERT_ATTEMPT, attempts, True), (s.MARK_DELIVERED, delivered, True)], deferred=True)
        self._outcomes = (attempts, delivered, fut)
        return fut

    def _recorded(
        self, fut: asyncio.Future, outcomes: list[tuple[int, str, str | None]], agent: str, bounce: Record | None
    ) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            # The delivery happened but its outcome is not stored: the message stays
            # queued in the database and is delivered again after a restart (at-least-once).
            # Its bounce was not stored either: it comes with the outcome that gets stored.
            log.error("could not record a delivery outcome: %s", fut.exception())
        elif bounce is not None and not fut.cancelled():
            self.bounced(bounce)
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
            if q.lease_timer is not None:
                q.lease_timer.cancel()
            if q.pause_timer is not None:
                q.pause_timer.cancel()
        for waiters in self.waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(("queued", "the daemon is shutting down"))
        for futs in (*self.receipt_waiters.values(), *self.arrivals.values()):
            _wake(futs)  # they look again, find nothing new, and answer


def _up(q: AgentQueue) -> None:
    """q's transport works (a delivery got through or failed as an attempt), or is new: nothing holds it."""
    q.down = q.down_since = q.holding = None
    q.recheck_ms = 0


def _log_failure(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("could not record the end of a pause: %s", fut.exception())


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
