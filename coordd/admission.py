"""May these new messages be admitted? Queue limits and idempotency keys, counting what is not yet stored.

Between a send's acceptance and its commit (a group commit: usually the next turn
of the loop) its messages are in neither the queues nor the database. `Admission`
counts them, by agent and in bytes, so that the queue limits see them, and keeps
their idempotency keys with the commit's future, so that a second send with the
same key gets the first one's id, and its answer only once that one is stored.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from coordd.config import Queue
from coordd.delivery import Delivery
from coordd.model import Record, Refused
from coordd.store import Store


class Admission:
    def __init__(self, store: Store, delivery: Delivery) -> None:
        self.store = store
        self.delivery = delivery
        self._unstored: Counter[str] = Counter()  # accepted, commit not yet done, by agent
        self._unstored_bytes = 0  # ...and what their bodies hold (see queue.max_bytes)
        self._unstored_keys: dict[str, tuple[int, asyncio.Future]] = {}

    def known_key(self, key: str, waits: list[asyncio.Future]) -> int | None:
        """The id of the message that already has this idempotency key, if any. When that one is still being
        committed, its commit's future joins `waits`: the reply waits for it."""
        unstored = self._unstored_keys.get(key)
        if unstored is not None:
            waits.append(unstored[1])
            return unstored[0]
        row = self.store.find_key(key)
        return row[0] if row else None

    def unstored(self, agent: str) -> int:
        """The agent's messages accepted whose commit is not done yet."""
        return self._unstored.get(agent, 0)

    def check_limits(self, n: int, per_agent: dict[str, int], size: int, q: Queue) -> None:
        """Refuse what would take a queue past its limits: n new messages, by agent, whose bodies hold size bytes
        (counted by the caller as it checks each message: a large batch is checked a chunk per turn)."""
        total = self.delivery.queued() + sum(self._unstored.values()) + n
        if total > q.max_total:
            raise Refused(
                "queue_full",
                f"{total} messages would be queued, over queue.max_total = {q.max_total}: "
                "wait for deliveries to drain or raise the limit",
            )
        held = self.delivery.held() + self._unstored_bytes + size
        if held > q.max_bytes:
            raise Refused(
                "queue_full",
                f"undelivered messages would hold {held:,} bytes, over queue.max_bytes = "
                f"{q.max_bytes:,}: wait for deliveries to drain, send smaller messages, or raise the limit",
            )
        for agent, count in per_agent.items():
            depth = self.delivery.queues[agent].depth() + self._unstored[agent] + count
            if depth > q.max_per_agent:
                raise Refused(
                    "queue_full",
                    f"agent {agent} would have {depth} queued, over queue.max_per_agent = "
                    f"{q.max_per_agent}: wait for its deliveries or raise the limit",
                )

    def committing(self, per_agent: dict[str, int], size: int, by_key: dict[str, Record], fut: asyncio.Future) -> None:
        """New messages (by agent, holding size bytes, by_key those with a key) are being committed by fut:
        count them until `committed`."""
        self._unstored_bytes += size
        for agent, n in per_agent.items():
            self._unstored[agent] += n
        for key, rec in by_key.items():
            self._unstored_keys[key] = (rec.id, fut)

    def committed(self, per_agent: dict[str, int], size: int, by_key: dict[str, Record]) -> None:
        """Their commit is done, or failed: the queues (or nothing) hold them now."""
        self._unstored_bytes -= size
        for agent, n in per_agent.items():
            self._unstored[agent] -= n
        for key in by_key:
            self._unstored_keys.pop(key, None)
