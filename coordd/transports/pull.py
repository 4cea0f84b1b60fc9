"""The pull transport: nothing is pushed. The agent fetches its messages through the inbox request.

A pull agent's queue has no worker: its messages wait in the queue until a fetch takes
them (coordd.pull), which delivers them and leases them (coordd.delivery keeps the leases).
This object only names the transport and tells delivery not to push (`pull`).
"""

from __future__ import annotations

from coordd.config import PullAgent
from coordd.transports import Record, Transport


class PullTransport(Transport):
    name = "pull"
    pull = True

    def __init__(self, agent: PullAgent) -> None:
        self.agent = agent.id

    async def deliver(self, messages: list[Record]) -> None:  # pragma: no cover - no worker calls it
        raise AssertionError(f"{self.agent} is a pull agent: its messages are fetched, never pushed")
