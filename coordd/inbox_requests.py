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
from coordd.model import Refused
from coordd.retry_cancel import write_or_refuse
from coordd.store import Store
from coordd.validation import MAX_PAGE, MAX_WAIT_S, check_agent, check_ids_list


class InboxRequests:
    def __init__(self, config: Config, store: Store, delivery: Delivery) -> None:
        self.store = store
        self.delivery = delivery
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
                        await self._mark(messages, s.MARK_ACKED if req.ack else s.MARK_READ)
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
            to, _ = found.get(message_id, (None, None))
            if to is None:
                raise Refused(
                    "unknown_message",
                    f"no message {message_id}: it never existed or retention pruned it; nothing was acknowledged",
                    message_id,
                )
            if to != req.agent:
                raise Refused(
                    "not_recipient",
                    f"message {message_id} is {to}'s, not {req.agent}'s: an agent acknowledges only its own "
                    "messages; nothing was acknowledged",
                    message_id,
                )
        unacked = [i for i in ids if found[i][1] is None]
        if unacked:
            now = time.time()
            await write_or_refuse(self.store, [(s.MARK_ACKED, [(now, i) for i in unacked], True)])
            self.delivery.receipted(unacked, "read")
            self.delivery.receipted(unacked, "acked")
        return p.Acked(changed=len(unacked))

    async def _mark(self, messages: list[p.MessageInfo], sql: str) -> None:
        """Store the read (or acked) receipt of the messages returned, and show it in them."""
        now = time.time()
        ids = [m.id for m in messages]
        await write_or_refuse(self.store, [(sql, [(now, i) for i in ids], True)])
        acked = sql is s.MARK_ACKED
        for m in messages:
            m.read_at = m.read_at or now
            if acked:
                m.acked_at = m.acked_at or now
        self.delivery.receipted(ids, "read")
        if acked:
            self.delivery.receipted(ids, "acked")
