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
import os
from collections.abc import Callable

import msgspec

from coordctl import protocol as p
from coordd import config as c
from coordd.delivery import AgentQueue, Delivery
from coordd.handlers import Handlers, Refused
from coordd.server import Server
from coordd.store import Store
from coordd.systemd import Notifier, monotonic_usec
from coordd.transports import Transport, make_transport

log = logging.getLogger("coordd.reload")


def _transport_key(agent: c.Agent, config: c.Config) -> tuple:
    """What an agent's transport is built from: its own keys but groups, and for a gui agent [gui]."""
    return msgspec.structs.replace(agent, groups=[]), config.gui if isinstance(agent, c.GuiAgent) else None


class Reloader:
    def __init__(self, config_path: str | None, handlers: Handlers, delivery: Delivery, server: Server,
                 store: Store, notifier: Notifier, spawn: Callable, summary: Callable[[], str]) -> None:  # fmt: skip
        self.config_path = config_path
        self.handlers = handlers
        self.delivery = delivery
        self.server = server
        self.store = store
        self.notifier = notifier
        self.spawn = spawn  # spawn(coroutine, name) -> Task, in the daemon's task group
        self.summary = summary
        self.running = self._restart_only(handlers.config)  # as configured at start, still in use
        self.on_retention_change: Callable[[], None] = lambda: None
        self.lock = asyncio.Lock()

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
        old = self.handlers.config
        before = {a.id: a for a in old.agents}
        after = {a.id: a for a in new.agents}
        added = [i for i in after if i not in before]
        removed = [i for i in before if i not in after]
        changed = [i for i in after if i in before and _transport_key(after[i], new) != _transport_key(before[i], old)]
        fresh = await self._start_transports({i: after[i] for i in added + changed}, new)

        # The switch: no await from here on.
        for agent_id in removed:
            self._retire(agent_id)
        for agent_id in changed:
            self._swap(self.delivery.queues[agent_id], fresh[agent_id])
        for agent_id in added:
            self._add(agent_id, fresh[agent_id])
        self.delivery.queues = {a.id: self.delivery.queues[a.id] for a in new.agents}  # config order
        self.handlers.configure(new)
        self.handlers.config_error = None
        self._apply_settings(old, new)
        restart = [k for k, v in self._restart_only(new).items() if v != self.running[k]]
        orphaned = sum(self.delivery.orphaned().values())
        log.info("reloaded %s: added %s, removed %s, changed %s, %d orphaned%s", self.config_path or "config",
                 added or "none", removed or "none", changed or "none", orphaned,
                 f"; restart to apply {', '.join(restart)}" if restart else "")  # fmt: skip
        return p.Reloaded(config=self.config_path or "<embedded default>", added=added, removed=removed,
                          changed=changed, restart_needed=restart, orphaned=orphaned)  # fmt: skip

    def _fail(self, error: str) -> None:
        self.handlers.config_error = error
        log.error("reload failed, still serving the previous config: %s", error)
        raise Refused("bad_config", f"{error} (coordd still serves the previous config: fix the file and reload again)")

    async def _start_transports(self, agents: dict[str, c.Agent], config: c.Config) -> dict[str, Transport]:
        started: dict[str, Transport] = {}
        try:
            for agent_id, agent in agents.items():
                t = make_transport(agent, config)
                await t.start()
                started[agent_id] = t
        except Exception as e:
            for t in started.values():
                await t.close()
            self._fail(f"agent {agent_id}: its transport does not start: {e}")
        return started

    def _retire(self, agent_id: str) -> None:
        q = self.delivery.queues.pop(agent_id)
        old, q.transport = q.transport, None
        q.retired = True
        q.wakeup.set()  # the worker leaves its wait and exits
        self.delivery.orphans[agent_id] = q
        self._close_after_delivery(q, old)

    def _swap(self, q: AgentQueue, transport: Transport) -> None:
        old, q.transport = q.transport, transport
        if old is not None:
            transport.take_over(old)
        q.down = None
        q.resume_at = 0.0  # a new transport gets a try at once, not after the old one's backoff
        q.wakeup.set()
        self._close_after_delivery(q, old)

    def _add(self, agent_id: str, transport: Transport) -> None:
        q = self.delivery.orphans.pop(agent_id, None)
        if q is None:
            q = AgentQueue(agent_id, transport)
        else:  # configured again: its orphaned messages go out, in their order
            q.transport, q.retired, q.down, q.resume_at = transport, False, None, 0.0
            q.wakeup.set()
        self.delivery.queues[agent_id] = q
        if q.task is None or q.task.done():  # else the retired worker had not exited yet, and carries on
            q.task = self.spawn(self.delivery.worker(q), f"deliver:{agent_id}")

    def _close_after_delivery(self, q: AgentQueue, transport: Transport | None) -> None:
        if transport is not None:
            self.spawn(_close_when_idle(q, transport), f"close:{q.id}")

    def _apply_settings(self, old: c.Config, new: c.Config) -> None:
        self.delivery.config = new.delivery
        self.store.max_rows = new.retention.max_messages
        d = new.daemon
        self.server.max_frame = d.max_frame_bytes
        self.server.max_connections = d.max_connections
        self.server.allowed_uids = {os.getuid(), *d.allow_uids}
        self.server.allowed_gids = set(d.allow_gids)
        logging.getLogger().setLevel(d.log_level.upper())
        if new.retention != old.retention:
            self.on_retention_change()

    @staticmethod
    def _restart_only(cfg: c.Config) -> dict[str, object]:
        return {"daemon.socket": cfg.daemon.socket, "store.path": cfg.store.path,
                "store.synchronous": cfg.store.synchronous, "metrics.listen": cfg.metrics.listen}  # fmt: skip


async def _close_when_idle(q: AgentQueue, transport: Transport) -> None:
    async with q.busy:  # the delivery in progress, if any, ran on `transport`: let it finish
        pass
    try:
        await transport.close()
    except Exception:
        log.exception("closing the replaced %s transport of %s failed", transport.name, q.id)
