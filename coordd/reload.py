"""Live reload (SIGHUP, `coordctl reload`): re-read the config and apply it without losing a message.

An invalid file, or a transport that will not start, changes nothing: the old
config keeps serving and the error shows in `status` and in the reply. Otherwise:

- an added agent gets a queue and a worker (and, if it was configured before,
  the messages still queued for it: its orphaned queue comes back);
- a changed agent keeps its queue; the new transport takes the next delivery and
  the old one is closed once the delivery in progress on it has finished;
- a removed agent's worker stops after its delivery in progress; its messages
  stay queued (in the database and in order in memory) and count as orphaned;
- every other key applies at once, except the socket and the database, which
  need a restart (the reply names them).

All new transports are started before anything is switched, and the switch
itself has no await in it, so a request sees either the old config or the new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

import msgspec

from coordctl import protocol as p
from coordd import config as c
from coordd.delivery import Delivery
from coordd.handlers import Handlers
from coordd.inbox_retention import InboxPruner
from coordd.model import Refused
from coordd.retention import Pruner
from coordd.server import Server
from coordd.store import Store
from coordd.systemd import Notifier, monotonic_usec
from coordd.transports import Transport
from coordd.transports.factory import make_transport

log = logging.getLogger("coordd.reload")


class Served(Protocol):
    """Where the directory says an agent of another node is (coordd.cluster.directory.Entry)."""

    node: str
    groups: list[str]
    health: str | None


def _transport_key(agent: c.Agent, config: c.Config) -> tuple:
    """What an agent's transport is built from: its own keys but groups (and another node's agent's health), and
    for a gui agent [gui]."""
    if isinstance(agent, c.RemoteAgent):
        return msgspec.structs.replace(agent, groups=[], health=None), None
    return msgspec.structs.replace(agent, groups=[]), config.gui if isinstance(agent, c.GuiAgent) else None


class Reloader:
    """Applies a new config to the objects that serve it, each through its own `configure`-like method."""

    def __init__(
        self,
        config_path: str | None,
        handlers: Handlers,
        delivery: Delivery,
        server: Server,
        store: Store,
        pruner: Pruner,
        inbox_pruner: InboxPruner,
        notifier: Notifier,
        spawn: Callable,
        summary: Callable[[], str],
        remote: Callable[[c.RemoteAgent], Transport] | None = None,
    ) -> None:
        self.config_path = config_path
        self.handlers = handlers
        self.delivery = delivery
        self.server = server
        self.store = store
        self.pruner = pruner
        self.inbox_pruner = inbox_pruner
        self.notifier = notifier
        self.spawn = spawn  # spawn(coroutine, name) -> Task, in the daemon's task group
        self.summary = summary
        self.running = self._restart_only(handlers.config)  # as configured at start, still in use
        self.lock = asyncio.Lock()
        # A cluster's node (coordd.cluster) serves the file's agents and the agents of other nodes the directory
        # knows (RemoteAgent, served by `remote`'s transports); the file's agents another node holds it refuses.
        self.remote = remote
        self.file_config = handlers.config
        self.remote_agents: list[c.RemoteAgent] = []

    def local_agents(self) -> dict[str, list[str]]:
        """The agents the config file names, with their groups (in a cluster, what this node registers)."""
        return {a.id: a.groups for a in self.file_config.agents}

    def cluster_changed(self, remote: Mapping[str, Served], refused: Collection[str]) -> None:
        """The directory knows these agents served by other nodes (agent -> its node and groups); `refused` are
        the file's that another node holds."""
        self.remote_agents = [
            c.RemoteAgent(id=a, node=e.node, groups=list(e.groups), refused=a in refused, health=e.health)
            for a, e in sorted(remote.items())
        ]
        self.spawn(self._apply_cluster(), "cluster-agents")

    async def _apply_cluster(self) -> None:
        async with self.lock:
            try:
                await self._apply(self._served(self.file_config), "cluster directory")
            except Refused:
                pass  # already logged, and shown in status

    def _served(self, file_config: c.Config) -> c.Config:
        if not self.remote_agents:
            return file_config
        remote = {a.id for a in self.remote_agents}
        agents: list[c.Agent] = [a for a in file_config.agents if a.id not in remote]
        return msgspec.structs.replace(file_config, agents=agents + self.remote_agents)

    def on_sighup(self) -> None:
        self.spawn(self._reload_logged(), "reload")

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Refused:
            pass  # already logged, and shown in status

    async def reload(self) -> p.Reloaded:
        async with self.lock:
            self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")
            try:
                return await self._reload()
            finally:
                self.notifier.notify("READY=1", f"STATUS={self.summary()}")

    async def _reload(self) -> p.Reloaded:
        try:
            new = c.load(self.config_path)
        except c.ConfigError as e:
            self._fail(str(e))
        self.file_config = new
        return await self._apply(self._served(new), self.config_path or "config")

    async def _apply(self, new: c.Config, source: str) -> p.Reloaded:
        old = self.handlers.config
        before = {a.id: a for a in old.agents}
        after = {a.id: a for a in new.agents}
        added = [i for i in after if i not in before]
        removed = [i for i in before if i not in after]
        changed = [i for i in after if i in before and _transport_key(after[i], new) != _transport_key(before[i], old)]
        fresh = await self._start_transports({i: after[i] for i in added + changed}, new)

        # The switch: no await from here on.
        for agent_id in removed:
            self.delivery.retire(agent_id)
        for agent_id in changed:
            self.delivery.replace_transport(agent_id, fresh[agent_id])
        for agent_id in added:
            self.delivery.add(agent_id, fresh[agent_id])
        self.delivery.configure(new.delivery, [a.id for a in new.agents])
        self.handlers.configure(new)
        self.store.configure(new.retention.max_messages)
        self.server.configure(new.daemon)
        logging.getLogger().setLevel(new.daemon.log_level.upper())
        self.pruner.configure(new.retention)
        self.inbox_pruner.configure(new.retention)
        restart = [k for k, v in self._restart_only(new).items() if v != self.running[k]]
        orphaned = sum(self.delivery.orphaned().values())
        log.info(
            "reloaded %s: added %s, removed %s, changed %s, %d orphaned%s",
            source,
            added or "none",
            removed or "none",
            changed or "none",
            orphaned,
            f"; restart to apply {', '.join(restart)}" if restart else "",
        )
        return p.Reloaded(
            config=self.config_path or "<embedded default>",
            added=added,
            removed=removed,
            changed=changed,
            restart_needed=restart,
            orphaned=orphaned,
        )

    def _fail(self, error: str) -> None:
        self.handlers.reload_failed(error)
        log.error("reload failed, still serving the previous config: %s", error)
        raise Refused("bad_config", f"{error} (coordd still serves the previous config: fix the file and reload again)")

    async def _start_transports(self, agents: dict[str, c.Agent], config: c.Config) -> dict[str, Transport]:
        started: dict[str, Transport] = {}
        try:
            for agent_id, agent in agents.items():
                if isinstance(agent, c.RemoteAgent):
                    assert self.remote is not None  # only a cluster's directory makes remote agents
                    t = self.remote(agent)
                else:
                    t = make_transport(agent, config)
                await t.start()
                started[agent_id] = t
        except Exception as e:
            for t in started.values():
                await t.close()
            self._fail(f"agent {agent_id}: its transport does not start: {e}")
        return started

    @staticmethod
    def _restart_only(cfg: c.Config) -> dict[str, object]:
        return {
            "daemon.socket": cfg.daemon.socket,
            "store.path": cfg.store.path,
            "store.synchronous": cfg.store.synchronous,
            "metrics.listen": cfg.metrics.listen,
            "http.listen": cfg.http.listen,
            "cluster": cfg.cluster,
        }
