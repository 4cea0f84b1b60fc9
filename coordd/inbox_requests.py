"""inbox and ack: a recipient fetches its delivered messages (they are marked read) and acknowledges them.

Both receipts are stored before the reply, and only then told to senders waiting on them
(`send` with wait_for read or acked, through Delivery.receipted). An inbox request that
finds nothing and may wait is answered when the next delivery to its agent is recorded
(Delivery.wait_arrival): the daemon holds the request, the client does not poll.

A pull agent's inbox request (unread, the default) is its delivery: coordd.pull takes its
queued messages and leases them; while the agent is paused it returns none (its messages
wait in the queue, as a pushed agent's do). Its long-poll is woken when a message is queued for it,
and when a lease ends (Delivery.enqueue, Delivery._expire).

Requests for one agent that change receipts (inbox, ack) run one at a time (`busy`): each
reads the receipts after the previous one's write is committed, so every read and acked
event is reported once, and two fetches never return the same message.
"""

from __future__ import annotations

import asyncio
import time

from coordctl import protocol as p
from coordd import schema as s
from coordd.config import Config
from coordd.delivery import Delivery
from coordd.hooks import NO_HOOKS, Hooks, Receipted
from coordd.model import Refused
from coordd.pull import Fetches
from coordd.reads import AckState
from coordd.retry_cancel import write_or_refuse
from coordd.store import Store
from coordd.validation import MAX_PAGE, MAX_WAIT_S, check_agent, check_ids_list


class InboxRequests:
    def __init__(self, config: Config, store: Store, delivery: Delivery, observer: Hooks = NO_HOOKS) -> None:
        self.store = store
        self.delivery = delivery
        self.observer = observer
        self.busy: dict[str, asyncio.Lock] = {}  # by agent: its inbox and ack requests, one at a time
        self.fetches = Fetches(store, delivery, config.pull.lease_s, observer)
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.agents = {a.id for a in config.agents}
        self.max_frame_bytes = config.daemon.max_frame_bytes
        self.fetches.lease_s = config.pull.lease_s

    def _busy(self, agent: str) -> asyncio.Lock:
        lock = self.busy.get(agent)
        if lock is None:
            lock = self.busy[agent] = asyncio.Lock()
        return lock

    async def inbox(self, req: p.Inbox) -> p.Page:
        check_agent(req.agent, self.agents, self.delivery.orphans)
        if not 1 <= req.limit <= MAX_PAGE:
            raise Refused("bad_request", f"limit must be 1 to {MAX_PAGE}, got {req.limit}")
        if not 0 <= req.wait <= MAX_WAIT_S:
            raise Refused("bad_request", f"wait must be 0 to {MAX_WAIT_S:g} seconds, got {req.wait}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.wait
        budget = self.max_frame_bytes - 1024  # the page's own fields
        while True:
            # Registered before looking, so a delivery recorded while the query runs still wakes us.
            arrival = self.delivery.wait_arrival(req.agent) if req.wait else None
            try:
                # One fetch of an agent's inbox at a time, until its messages are marked read: two requests at
                # once never both get the same unread message.
                async with self._busy(req.agent):
                    q = self.delivery.queues.get(req.agent)
                    if req.unread and q is not None and q.pull:
                        # Paused: nothing new is delivered (a long-poll waits on; `resume` wakes it).
                        paused = q.paused is not None
                        messages = [] if paused else await self.fetches.fetch(q, req.limit, budget, req.ack)
                    else:
                        messages = await self.store.inbox(req.agent, req.unread, req.limit, budget)
                        if messages:
                            await self._mark(req.agent, messages, req.ack)
                left = deadline - loop.time()
                if messages or arrival is None or left <= 0 or self.delivery.stopping:
                    return p.Page(messages=messages)
                try:
                    await asyncio.wait_for(arrival, left)
                except TimeoutError:
                    pass
            finally:
                if arrival is not None:
                    self.delivery.drop_waiter(self.delivery.arrivals, req.agent, arrival)

    async def ack(self, req: p.Ack) -> p.Acked:
        check_agent(req.agent, self.agents, self.delivery.orphans)
        check_ids_list(req.ids, MAX_PAGE)
        ids = list(dict.fromkeys(req.ids))
        async with self._busy(req.agent):
            return await self._ack(req.agent, ids)

    async def _ack(self, agent: str, ids: list[int]) -> p.Acked:
        found = self.store.ack_states(ids)
        for message_id in ids:
            state = found.get(message_id)
            if state is None:
                raise Refused(
                    "unknown_message",
                    f"no message {message_id}: it never existed or retention pruned it; nothing was acknowledged",
                    message_id,
                )
            if state.agent != agent:
                raise Refused(
                    "not_recipient",
                    f"message {message_id} is {state.agent}'s, not {agent}'s: an agent acknowledges only its own "
                    "messages; nothing was acknowledged",
                    message_id,
                )
            if state.status != "delivered":
                raise Refused("bad_state", self._not_delivered(agent, message_id, state.status), message_id)
        unacked = [i for i in ids if found[i].acked_at is None]
        if unacked:
            now = time.time()
            await write_or_refuse(self.store, [(s.MARK_ACKED, [(now, i) for i in unacked], True)])
            self.delivery.acked(agent, unacked)  # a pull agent's: never fetched again
            self.delivery.receipted(unacked, "read")
            self.delivery.receipted(unacked, "acked")
            self.delivery.drop_unacked(agent, len(unacked))  # (all delivered: the others were refused above)
            # Acknowledging an unread message reads it too (schema.MARK_ACKED): its `read` comes first.
            unread = [_receipted(i, found[i]) for i in unacked if found[i].read_at is None]
            if unread:
                self.observer.read(agent, unread, now)
            self.observer.acked(agent, [_receipted(i, found[i]) for i in unacked], now)
        return p.Acked(changed=len(unacked))

    def _not_delivered(self, agent: str, message_id: int, status: str) -> str:
        """Why a message that was not delivered cannot be acknowledged, and what to do."""
        q = self.delivery.queue_of(agent)
        if status == "queued" and self.delivery.in_flight(message_id):
            status = "delivering"
        if status == "queued" and q is not None and q.pull:
            todo = (
                f"{agent} pulls its messages: fetch it first (`coordctl inbox {agent}`, or the inbox request), "
                "then acknowledge it (or fetch with ack)"
            )
        elif status in ("queued", "delivering"):
            todo = (
                f"acknowledge it once it is delivered (`coordctl show {message_id}` shows when; "
                f"`coordctl inbox {agent}` lists it then)"
            )
        else:
            todo = "it was never delivered, so there is nothing to acknowledge"
        return f"message {message_id} is {status}: {todo}; nothing was acknowledged"

    async def _mark(self, agent: str, messages: list[p.MessageInfo], ack: bool) -> None:
        """Store the read (and with ack, acked) receipt of the messages returned, and show it in them."""
        now = time.time()
        ids = [m.id for m in messages]
        await write_or_refuse(self.store, [(s.MARK_ACKED if ack else s.MARK_READ, [(now, i) for i in ids], True)])
        # Reported only for the messages whose receipt this changed (unread=False returns read ones too).
        unread = [(m.id, m.sender, m.priority) for m in messages if m.read_at is None]
        unacked = [(m.id, m.sender, m.priority) for m in messages if ack and m.acked_at is None]
        for m in messages:
            m.read_at = m.read_at or now
            if ack:
                m.acked_at = m.acked_at or now
        self.delivery.receipted(ids, "read")
        if unread:
            self.observer.read(agent, unread, now)
        if ack:
            self.delivery.acked(agent, ids)  # a pull agent's (inbox --all --ack): never fetched again
            self.delivery.receipted(ids, "acked")
            self.delivery.drop_unacked(agent, len(unacked))  # all delivered: the inbox returns no other
            if unacked:
                self.observer.acked(agent, unacked, now)


def _receipted(message_id: int, state: AckState) -> Receipted:
    return message_id, state.sender, state.priority
