"""inbox and ack: a recipient fetches its delivered messages (they are marked read) and acknowledges them.

Both receipts are stored before the reply, and only then told to senders waiting on them
(`send` with wait_for read or acked, through Delivery.receipted). An inbox request that
finds nothing and may wait is answered when the next delivery to its agent is recorded
(Delivery.wait_arrival): the daemon holds the request, the client does not poll.
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
from coordd.reads import AckState
from coordd.retry_cancel import write_or_refuse
from coordd.store import Store
from coordd.validation import MAX_PAGE, MAX_WAIT_S, check_agent, check_ids_list


class InboxRequests:
    def __init__(self, config: Config, store: Store, delivery: Delivery, observer: Hooks = NO_HOOKS) -> None:
        self.store = store
        self.delivery = delivery
        self.observer = observer
        self.fetching: dict[str, asyncio.Lock] = {}  # by agent
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.agents = {a.id for a in config.agents}
        self.max_frame_bytes = config.daemon.max_frame_bytes

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
                async with self.fetching.setdefault(req.agent, asyncio.Lock()):
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
        found = self.store.ack_states(ids)
        for message_id in ids:
            state = found.get(message_id)
            if state is None:
                raise Refused(
                    "unknown_message",
                    f"no message {message_id}: it never existed or retention pruned it; nothing was acknowledged",
                    message_id,
                )
            if state.agent != req.agent:
                raise Refused(
                    "not_recipient",
                    f"message {message_id} is {state.agent}'s, not {req.agent}'s: an agent acknowledges only its own "
                    "messages; nothing was acknowledged",
                    message_id,
                )
        unacked = [i for i in ids if found[i].acked_at is None]
        if unacked:
            now = time.time()
            await write_or_refuse(self.store, [(s.MARK_ACKED, [(now, i) for i in unacked], True)])
            self.delivery.receipted(unacked, "read")
            self.delivery.receipted(unacked, "acked")
            # (a failed or cancelled message was taken away from the agent's unacked when it ended)
            self.delivery.drop_unacked(req.agent, sum(found[i].status in ("queued", "delivered") for i in unacked))
            # Acknowledging an unread message reads it too (schema.MARK_ACKED): its `read` comes first.
            unread = [_receipted(i, found[i]) for i in unacked if found[i].read_at is None]
            if unread:
                self.observer.read(req.agent, unread, now)
            self.observer.acked(req.agent, [_receipted(i, found[i]) for i in unacked], now)
        return p.Acked(changed=len(unacked))

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
            self.delivery.receipted(ids, "acked")
            self.delivery.drop_unacked(agent, len(unacked))  # all delivered: the inbox returns no other
            if unacked:
                self.observer.acked(agent, unacked, now)


def _receipted(message_id: int, state: AckState) -> Receipted:
    return message_id, state.sender, state.priority
