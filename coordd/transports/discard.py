"""The discard transport, for benchmarks and soak tests only: messages are accepted and dropped.

Every message handed to it counts as delivered at once (and is recorded as such),
so a benchmark measures the daemon itself: socket, protocol, store, queues,
retention. Never configure it for a real agent: what it delivers, nobody reads.
"""

from __future__ import annotations

from coordd.config import DiscardAgent
from coordd.transports import Record, Transport


class DiscardTransport(Transport):
    name = "discard"

    def __init__(self, agent: DiscardAgent) -> None:
        self.max_batch = agent.chunk
        self.delivered = 0

    def idle(self, queued: int, unacked: int) -> bool | None:
        return queued == 0

    async def deliver(self, messages: list[Record]) -> None:
        self.delivered += len(messages)
