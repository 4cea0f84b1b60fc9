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

from coordctl.protocol import NewMessage
from coordd.config import Queue
from coordd.delivery import Delivery
from coordd.model import Record, Refused
from coordd.store import Store

# What two messages with one idempotency key must share to be the same message, a send repeated (else
# key_conflict): what it says and to whom. Its labels (sender, kind, tags, priority, subject) may differ: a
# retry that leaves one out (as a 0.1.0 client's may) is still the same message, and gets the first one's id.
CONTENT = ("recipient", "body")


def content(m: NewMessage) -> tuple[str, str]:
    return (m.to, m.body)


def stored_content(r: Record) -> tuple[str, str]:
    """As `content`: its recipient is the group it was sent to, if any (whose pick chose r.agent)."""
    return (r.group or r.agent, r.body)


class Admission:
    def __init__(self, store: Store, delivery: Delivery) -> None:
        self.store = store
        self.delivery = delivery
        self._unstored: Counter[str] = Counter()  # accepted, commit not yet done, by agent
        self._unstored_total = 0  # ...in all
        self._unstored_bytes = 0  # ...and what their bodies hold (see queue.max_bytes)
        self._unstored_keys: dict[str, tuple[int, Record, asyncio.Future]] = {}

    def known_key(
        self, key: str, m: NewMessage, by_key: dict[str, Record], waits: list[asyncio.Future], where: str
    ) -> int | Record | None:
        """The id of the message that already has this idempotency key (being committed, or stored), or
        the Record of one earlier in this request (`by_key`: its id is not allocated yet), if any; it must
        be `m` again, else key_conflict. When that one is still being committed, its commit's future joins
        `waits`: the reply waits for it."""
        rec = by_key.get(key)
        unstored = self._unstored_keys.get(key) if rec is None else None
        if rec is None and unstored is not None:
            rec = unstored[1]
            waits.append(unstored[2])
        if rec is None:
            rec = self.store.find_key(key)  # the one query there always was: only a duplicate is compared
        if rec is None:
            return None
        differs = [field for field, a, b in zip(CONTENT, content(m), stored_content(rec), strict=True) if a != b]
        if differs:
            first = f"message {rec.id}" if rec.id else "an earlier message of this request"
            raise Refused(
                "key_conflict",
                f"{where}key {key!r} is already {first}'s, which has another {' and '.join(differs)}: "
                "a key names one message; use a new key for a new message",
            )
        return rec if key in by_key else rec.id

    def unstored(self, agent: str) -> int:
        """The agent's messages accepted whose commit is not done yet."""
        return self._unstored.get(agent, 0)

    def check_limits(self, n: int, per_agent: dict[str, int], size: int, q: Queue) -> None:
        """Refuse what would take a queue past its limits: n new messages, by agent, whose bodies hold size bytes
        (counted by the caller as it checks each message: a large batch is checked a chunk per turn)."""
        unstored = self._unstored_total + n
        # The messages every queue holds, orphaned ones too, bound queued() from above: summed only when close.
        total = self.delivery.totals.messages + unstored
        if total > q.max_total and (total := self.delivery.queued() + unstored) > q.max_total:
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
            self._unstored_total += n
        for key, rec in by_key.items():
            self._unstored_keys[key] = (rec.id, rec, fut)

    def committed(self, per_agent: dict[str, int], size: int, by_key: dict[str, Record]) -> None:
        """Their commit is done, or failed: the queues (or nothing) hold them now."""
        self._unstored_bytes -= size
        for agent, n in per_agent.items():
            self._unstored[agent] -= n
            self._unstored_total -= n
        for key in by_key:
            self._unstored_keys.pop(key, None)
