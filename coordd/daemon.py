"""The daemon's life: start up, serve until a signal, shut down without losing anything.

Shaped like hypercorn's asyncio runner: a signal sets an event, one TaskGroup
owns the long-running tasks (a delivery worker per agent, retention, the
systemd watchdog), and shutdown is a single `finally` that runs whatever
happened before it. docs/systemd.md describes the systemd side: readiness,
watchdog, socket activation, graceful stop and reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from coordd import listener, observer, retention, systemd, testhooks
from coordd.config import Config
from coordd.delivery import Delivery
from coordd.handlers import Handlers
from coordd.reload import Reloader
from coordd.server import Server
from coordd.store import Store
from coordd.transports import make_transport

log = logging.getLogger("coordd")


async def serve(config: Config, config_path: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    notifier = systemd.Notifier()
    watchdog_period = systemd.watchdog_period()
    fds = systemd.listen_fds()
    inherited = listener.adopt(fds) if fds else None  # socket activation: systemd's socket, used as it is
    if inherited is not None:
        socket_path = listener.adopted_path(inherited, config.daemon.socket)
    else:
        socket_path = config.daemon.socket
        listener.private_dir(os.path.dirname(socket_path) or ".")
    lock_fd = listener.lock(socket_path)
    stop = asyncio.Event()
    reloader: Reloader | None = None
    _handle_signals(loop, notifier, stop, lambda: reloader and reloader.on_sighup())
    store = Store(config.store.path, config.store.synchronous)
    store.max_rows = config.retention.max_messages
    transports = {a.id: make_transport(a, config) for a in config.agents}
    testhooks.install(store, transports)
    delivery = Delivery(config.delivery, store, transports)
    server = aserver = metrics_http = None
    try:
        await store.open()
        for t in transports.values():
            await t.start()
        _requeue(store, delivery)
        handlers = Handlers(config, store, delivery, socket_path)
        d = config.daemon
        server = Server(handlers, d.max_frame_bytes, d.max_connections, {os.getuid(), *d.allow_uids}, set(d.allow_gids))
        watched = observer.install(config, store, delivery, handlers, server)  # metrics and watch events
        # Bound now, so that a second daemon finds the socket taken; connections wait in the backlog until
        # everything they may ask for is in place (start_serving, just before READY).
        sock = inherited or listener.bind(socket_path)
        aserver = await loop.create_unix_server(server.protocol, sock=sock, start_serving=False,
                                                backlog=listener.BACKLOG)
        metrics_http = await observer.start_http(watched, config)

        def summary() -> str:
            return _summary(handlers, delivery)

        async with asyncio.TaskGroup() as tg:
            background: dict[str, asyncio.Task] = {}

            def spawn(coro, name: str) -> asyncio.Task:
                return tg.create_task(coro, name=name)

            def start_pruner() -> None:
                if "retention" in background:
                    background["retention"].cancel()
                background["retention"] = spawn(retention.run(store, handlers.config.retention), "retention")

            reloader = Reloader(config_path, handlers, delivery, server, store, notifier, spawn, summary)
            reloader.on_retention_change = start_pruner
            handlers.reloader = reloader.reload
            for q in delivery.queues.values():
                q.task = spawn(delivery.worker(q), f"deliver:{q.id}")
            start_pruner()
            if notifier:
                background["status"] = spawn(systemd.refresh_status(notifier, summary), "status")
            if watchdog_period and notifier:
                background["watchdog"] = spawn(systemd.watchdog(notifier, store, watchdog_period), "watchdog")
            log.info("coordd serving %d agents on %s (%sdb %s, %d queued)", len(config.agents), socket_path,
                     "socket-activated, " if inherited else "", store.path, delivery.queued())  # fmt: skip
            await aserver.start_serving()
            notifier.notify("READY=1", f"STATUS={summary()}")  # the socket serves and the store is open
            await stop.wait()
            await _stop(aserver, handlers, delivery, server, background)
    finally:
        if metrics_http is not None:
            metrics_http.close()
        if server is not None:
            server.close_all()
        for t in {id(q.transport): q.transport for q in delivery.all_queues() if q.transport}.values():
            await t.close()
        await store.close()  # the final commit
        if aserver is not None and inherited is None:  # an inherited socket is systemd's: never unlinked
            os.unlink(socket_path)
        os.close(lock_fd)
        log.info("stopped")


def _handle_signals(loop, notifier: systemd.Notifier, stop: asyncio.Event, reload) -> None:
    """SIGTERM/SIGINT stop gracefully; a second one ends the process at once. SIGHUP reloads."""

    def on_stop() -> None:
        notifier.notify("STOPPING=1")
        stop.set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # The default action, not a Python handler: it works even while the loop is stuck.
            # Everything acknowledged is already committed, so nothing is lost.
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL)
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no reload while stopping

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, reload)


async def _stop(aserver, handlers: Handlers, delivery: Delivery, server: Server, background: dict) -> None:
    """Stop accepting; let deliveries in progress finish within the grace time; the rest stay queued."""
    loop = asyncio.get_running_loop()
    grace = handlers.config.daemon.shutdown_grace_ms / 1000
    deadline = loop.time() + grace
    log.info("stopping: no new connections, finishing deliveries in progress (up to %g s)", grace)
    aserver.close()
    handlers.accepting = False
    delivery.stop()
    for task in background.values():
        task.cancel()
    workers = [q.task for q in delivery.all_queues() if q.task is not None and not q.task.done()]
    if workers:
        _, late = await asyncio.wait(workers, timeout=grace)
        for task in late:  # their messages stay queued in the database for the next start
            task.cancel()
        if late:
            log.warning("%d deliveries did not finish within daemon.shutdown_grace_ms; they stay queued", len(late))
    if server.tasks:  # replies to requests already being handled
        await asyncio.wait(list(server.tasks), timeout=max(0.0, deadline - loop.time()))


def _summary(handlers: Handlers, delivery: Delivery) -> str:
    """The one-line STATUS= that `systemctl --user status coordd` shows."""
    qs = delivery.queues.values()
    text = (f"{len(qs)} agents, {sum(len(q) for q in qs)} queued, {sum(len(q.in_flight) for q in qs)} in flight, "
            f"{sum(q.down is not None for q in qs)} down")  # fmt: skip
    orphaned = sum(delivery.orphaned().values())
    if orphaned:
        text += f", {orphaned} orphaned"
    if handlers.config_error:
        text += ", last reload failed (see coordctl status)"
    return text


def _requeue(store: Store, delivery: Delivery) -> None:
    """Messages left queued by a previous run go out again (at-least-once)."""
    for rec in store.load_queued():
        delivery.enqueue(rec)  # for an agent no longer configured: kept as orphaned, in order
    orphaned = delivery.orphaned()
    if orphaned:
        log.warning("%d queued messages are for agents no longer configured (%s); they stay queued",
                    sum(orphaned.values()), ", ".join(sorted(orphaned)))  # fmt: skip
