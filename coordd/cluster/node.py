"""This daemon as a node of a cluster: the link, the directory, forwarding and receipts, put together.

The daemon builds one Cluster when the config has a [cluster] table (and only then imports this package). Its
hooks wrap the daemon's, so that the outcomes of messages from other nodes go back to them as receipts; its
`transport` serves the queue of each agent of another node; `start` runs its tasks in the daemon's task group.
The agents the directory learns become RemoteAgents of the config the daemon serves (coordd.reload).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from coordctl import protocol as p
from coordd.cluster import forwarding
from coordd.cluster.directory import Directory, Entry
from coordd.cluster.forwarding import ForwardTransport, Inbound, Outbox, ReceiptHooks, Receipts
from coordd.cluster.link import Link
from coordd.config import Cluster as ClusterConfig
from coordd.config import RemoteAgent
from coordd.delivery import Delivery
from coordd.hooks import Hooks
from coordd.store import Store
from coordd.transports import Transport


class Cluster:
    def __init__(self, config: ClusterConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.link = Link(config)
        self.outbox = Outbox(self.link, store)
        self.directory: Directory | None = None
        self.delivery: Delivery | None = None

    def hooks(self, inner: Hooks) -> Hooks:
        """The daemon's hooks, which also send receipts back to the node a message came from."""
        return ReceiptHooks(inner, self.outbox, self.store)

    def transport(self, agent: RemoteAgent) -> Transport:
        return ForwardTransport(agent, self.link)

    def start(
        self,
        spawn: Callable[..., asyncio.Task],
        delivery: Delivery,
        hooks: Hooks,
        local: Callable[[], dict[str, list[str]]],
        changed: Callable[[dict[str, Entry], dict[str, str]], None],
        retry: forwarding.Retry,
    ) -> list[asyncio.Task]:
        """Run the cluster's tasks. local: this node's configured agents (-> their groups); changed(remote,
        refused): the directory learned agents served elsewhere (agent -> its entry: node, groups), some of them
        this node's own, refused (agent -> node); retry: a local retry (a message retried by the node it came from)."""
        self.delivery = delivery
        self.directory = Directory(self.config, self.link, self.store, local, delivery.unreachable, changed)
        self.link.reconnects.append(lambda: forwarding.wake_forwarders(delivery))
        parts = {
            "link": self.link.run(),
            "directory": self.directory.run(),
            "inbound": Inbound(self.link, self.store, delivery, hooks, retry, self.outbox).run(),
            "receipts": Receipts(self.link, self.store, delivery, hooks).run(),
            "outbox": self.outbox.run(),
        }
        return [spawn(coro, f"cluster:{name}") for name, coro in parts.items()]

    def status(self) -> p.ClusterStatus:
        assert self.delivery is not None and self.directory is not None  # started before the socket serves
        return forwarding.status(self.link, self.directory.nodes(), self.directory.refused, self.delivery)

    async def close(self) -> None:
        await self.link.close()
