"""The daemon's life: start up, serve until a signal, shut down without losing anything.

Shaped like hypercorn's asyncio runner: a signal sets an event, one TaskGroup
owns the long-running tasks (a delivery worker per agent, retention, the
systemd watchdog), and shutdown is a single `finally` that runs whatever
happened before it. docs/systemd.md describes the systemd side: readiness,
watchdog, socket activation, graceful stop and reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

from coordctl import protocol as p
from coordd import listener, systemd
from coordd.admission import Admission
from coordd.config import Config
from coordd.delivery import Delivery
from coordd.events import EventBus
from coordd.groups import Groups
from coordd.handlers import Handlers
from coordd.hooks import NO_HOOKS, Hooks
from coordd.inbox_requests import InboxRequests
from coordd.inbox_retention import InboxPruner
from coordd.metrics import Collector, Metrics
from coordd.observer import BENCH_OFF, Observer, start_http
from coordd.pauses import Pauses
from coordd.queries import Queries
from coordd.reload import Reloader
from coordd.retention import Pruner
from coordd.retry_cancel import RetryCancel
from coordd.sending import Sending
from coordd.series import Series
from coordd.server import Server
from coordd.store import StorageError, Store
from coordd.transports import Transport
from coordd.transports.factory import make_transport

if TYPE_CHECKING:  # imported at run time only with [cluster] (nats-py)
    from coordd.cluster.node import Cluster

log = logging.getLogger("coordd")


async def serve(config: Config, config_path: str | None = None) -> None:
    """The composition root: the one place that builds every long-lived object, and so knows the whole graph.

    Each object gets what it needs when it is built; later changes (a reload) go through its own methods.
    """
    # Every file coordd creates is its user's alone (the database's temp files, the lock files), whatever
    # umask it was started with; an inbox agent's file_mode widens its own files on purpose.
    os.umask(0o077)
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

    def on_sighup() -> None:
        if reloader is not None:  # else still starting: the config it would read is the one being applied
            reloader.on_sighup()

    _handle_signals(loop, notifier, stop, on_sighup)
    store = Store(config.store.path, config.store.synchronous, config.retention.max_messages)
    transports = {a.id: make_transport(a, config) for a in config.agents}
    delivery: Delivery | None = None
    server = aserver = endpoint = sock = None
    dashboard = None  # coordd.dashboard_server.Dashboard, when [http] listen is set
    cluster: Cluster | None = None
    try:
        await store.open()
        for t in transports.values():
            await t.start()
        # Bound now, so that a second daemon finds the socket taken; connections wait in the backlog until
        # everything they may ask for is in place (start_serving, just before READY).
        sock = inherited or listener.bind(socket_path)
        async with asyncio.TaskGroup() as tg:

            def spawn(coro, name: str) -> asyncio.Task:  # every task of the daemon is in this group
                return tg.create_task(coro, name=name)

            metrics, bus = Metrics(), EventBus(config.metrics.watch_buffer)
            series = Series() if config.http.listen else None  # the dashboard's charts: kept only if it is served
            hooks: Hooks = Observer(metrics, bus, series)  # metrics, watch events, series: reported as they happen
            if os.environ.get(BENCH_OFF):
                log.warning("%s is set: no metrics, no watch events (a benchmark baseline)", BENCH_OFF)
                hooks = NO_HOOKS
            if config.cluster is not None:  # imported only here: nats-py is loaded by a cluster's node alone
                from coordd.cluster.node import Cluster

                cluster = Cluster(config.cluster, store)
                hooks = cluster.hooks(hooks)  # outcomes of messages from other nodes go back to them
            delivery = Delivery(config.delivery, store, transports, spawn, hooks)
            collector = Collector(metrics, delivery, store, bus)
            endpoint = await start_http(collector, config)
            if config.http.listen:
                from coordd import dashboard_server  # imports aiohttp: only when the dashboard is served

                listening = dashboard_server.bind(config)
            else:
                listening = None

            async def reload() -> p.Reloaded:  # the `reload` request; the reloader is built below
                assert reloader is not None  # built before the socket serves
                return await reloader.reload()

            admission = Admission(store, delivery)
            sending = Sending(config, store, delivery, admission, Groups(config, delivery, admission), hooks)
            http_url, http_error = (listening.url, listening.error) if listening else (None, None)
            queries = Queries(
                config,
                store,
                delivery,
                socket_path,
                hooks,
                endpoint.url,
                endpoint.error,
                http_url,
                http_error,
                cluster.status if cluster else None,
            )
            retry_cancel = RetryCancel(config, store, delivery, hooks)
            inbox = InboxRequests(config, store, delivery, hooks)
            pauses = Pauses(config, store, delivery)
            handlers = Handlers(
                config, delivery, sending, queries, retry_cancel, inbox, pauses, reload, hooks, collector.text
            )
            server = Server(handlers, config.daemon, hooks, bus)
            if listening is not None and series is not None:
                dashboard = dashboard_server.Dashboard(listening, server, bus, series, collector, config, socket_path)
            pruner = Pruner(store, config.retention, spawn, delivery.drop_unacked)
            inbox_pruner = InboxPruner(config.retention, delivery.transports, spawn)

            def summary() -> str:
                return _summary(handlers, delivery)

            reloader = Reloader(
                config_path,
                handlers,
                delivery,
                server,
                store,
                pruner,
                inbox_pruner,
                notifier,
                spawn,
                summary,
                cluster.transport if cluster else None,
            )
            aserver = await loop.create_unix_server(
                server.protocol, sock=sock, start_serving=False, backlog=listener.BACKLOG
            )

            _requeue(store, delivery)
            pauses.restore()  # before the workers start: a paused agent's first message waits
            delivery.start()
            pruner.start()
            inbox_pruner.start()
            background: list[asyncio.Task] = []
            if cluster is not None:
                background += cluster.start(
                    spawn, delivery, hooks, reloader.local_agents, reloader.cluster_changed, retry_cancel.retry
                )
            if notifier:
                background.append(spawn(systemd.refresh_status(notifier, summary), "status"))
            if watchdog_period and notifier:
                background.append(
                    spawn(systemd.watchdog(notifier, lambda: store.write([]), watchdog_period), "watchdog")
                )
            log.info(
                "coordd serving %d agents on %s (%sdb %s, %d queued)",
                len(config.agents),
                socket_path,
                "socket-activated, " if inherited else "",
                store.path,
                delivery.queued(),
            )
            await aserver.start_serving()
            if dashboard is not None:
                await dashboard.start()
            # What start-up built (modules, config, queues restored) lives as long as the daemon: out of the
            # collector's sight, so that its full collections do not walk it again and again under traffic.
            gc.freeze()
            notifier.notify("READY=1", f"STATUS={summary()}")  # the socket serves and the store is open
            await stop.wait()
            inbox_pruner.stop()
            await _stop(aserver, handlers, delivery, server, pruner, background)
    finally:
        if dashboard is not None:
            await dashboard.stop()  # before the store closes: requests in progress may still use it
        if endpoint is not None and endpoint.server is not None:
            endpoint.server.close()
        if server is not None:
            server.close_all()
        for t in _in_use(delivery, transports):
            await t.close()
        if cluster is not None:
            await cluster.close()
        await store.close()  # the final commit
        if sock is not None and inherited is None:  # an inherited socket is systemd's: never unlinked
            with contextlib.suppress(FileNotFoundError):  # its directory may have been deleted under us
                os.unlink(socket_path)
        os.close(lock_fd)
        log.info("stopped")


def _in_use(delivery: Delivery | None, transports: dict[str, Transport]) -> list[Transport]:
    """The transports to close: those delivery holds now (a reload may have replaced some), else those built."""
    return delivery.transports() if delivery is not None else list(transports.values())


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


async def _stop(
    aserver, handlers: Handlers, delivery: Delivery, server: Server, pruner: Pruner, background: list[asyncio.Task]
) -> None:
    """Stop accepting; let deliveries in progress finish within the grace time; the rest stay queued."""
    loop = asyncio.get_running_loop()
    grace = handlers.config.daemon.shutdown_grace_ms / 1000
    deadline = loop.time() + grace
    log.info("stopping: no new connections, finishing deliveries in progress (up to %g s)", grace)
    aserver.close()
    handlers.stop_accepting()
    delivery.stop()
    pruner.stop()
    for task in background:
        task.cancel()
    workers = delivery.workers()
    if workers:
        _, late = await asyncio.wait(workers, timeout=grace)
        for task in late:  # their messages stay queued in the database for the next start
            task.cancel()
        if late:
            log.warning("%d deliveries did not finish within daemon.shutdown_grace_ms; they stay queued", len(late))
    await server.finish(timeout=max(0.0, deadline - loop.time()))  # replies to requests already being handled


def _summary(handlers: Handlers, delivery: Delivery) -> str:
    """The one-line STATUS= that `systemctl --user status coordd` shows."""
    qs = delivery.queues.values()
    text = (
        f"{len(qs)} agents, {sum(len(q) for q in qs)} queued, {sum(len(q.in_flight) for q in qs)} in flight, "
        f"{sum(q.down is not None for q in qs)} down"
    )
    orphaned = sum(delivery.orphaned().values())
    if orphaned:
        text += f", {orphaned} orphaned"
    if handlers.config_error:
        text += ", last reload failed (see coordctl status)"
    return text


def _requeue(store: Store, delivery: Delivery) -> None:
    """Messages left queued by a previous run go out again (at-least-once); those a pull agent fetched and had
    not acknowledged are leased again until their lease's end, then fetched again."""
    for rec in store.load_queued():
        delivery.enqueue(rec)  # for an agent no longer configured: kept as orphaned, in order
    for rec, until in store.load_leased():
        delivery.restore_lease(rec, until)
    delivery.seed_unacked(store.delivered_unacked())
    orphaned = delivery.orphaned()
    if orphaned:
        log.warning(
            "%d queued messages are for agents no longer configured (%s); they stay queued",
            sum(orphaned.values()),
            ", ".join(sorted(orphaned)),
        )


# --- the process: logging, the event loop, the exit (`coordd run`: coordd.entry, coordd.cli) ----------

SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class OneLineFormatter(logging.Formatter):
    """One line per event, a traceback included, so the journal keeps each event whole.

    For journald the line starts with the syslog priority (<3> error .. <7> debug),
    which journald strips and stores: `journalctl --user -u coordd -p warning` works.
    """

    def __init__(self, fmt: str, journald: bool) -> None:
        super().__init__(fmt)
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record).replace("\n", "\\n")
        return f"<{SYSLOG_PRIORITY.get(record.levelname, 6)}>{line}" if self.journald else line


def _stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=<dev>:<inode> of the journal stream it connects stderr to."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return dev.isdigit() and ino.isdigit() and (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _setup_logging(level: str) -> None:
    journald = _stderr_is_journal()
    # Under systemd journald stamps each line itself.
    fmt = "%(levelname)s %(name)s: %(message)s" if journald else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(fmt, journald))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def serve_until_stopped(config: Config, config_path: str | None) -> NoReturn:
    """Serve until SIGTERM or SIGINT (a second one ends it at once); SIGHUP reloads the config."""
    import uvloop

    _setup_logging(config.daemon.log_level)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    code = 0
    try:
        loop.run_until_complete(serve(config, config_path))
    except (listener.ListenerError, StorageError) as e:
        log.error("%s", e)
        code = 1
    except Exception:
        log.exception("coordd failed")
        code = 1
    # Exit without joining threads: a delivery abandoned at the grace deadline may still be blocked in
    # one (its message is queued in the database for the next start), and it must not hold up the exit.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)
