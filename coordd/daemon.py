"""The daemon's life: start up, serve until a signal, shut down without losing anything.

Shaped like hypercorn's asyncio runner: a signal sets an event, one TaskGroup
owns the long-running tasks (a delivery worker per agent, retention), and
shutdown is a single `finally` that runs whatever happened before it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from coordd import listener, retention
from coordd.config import Config
from coordd.delivery import Delivery
from coordd.handlers import Handlers
from coordd.server import Server
from coordd.store import Store
from coordd.transports import make_transport

log = logging.getLogger("coordd")


async def serve(config: Config) -> None:
    loop = asyncio.get_running_loop()
    socket_path = config.daemon.socket
    listener.private_dir(os.path.dirname(socket_path) or ".")
    lock_fd = listener.lock(socket_path)
    store = Store(config.store.path, config.store.synchronous)
    store.max_rows = config.retention.max_messages
    transports = {a.id: make_transport(a) for a in config.agents}
    delivery = Delivery(config.delivery, store, transports)
    server = aserver = None
    try:
        await store.open()
        for t in transports.values():
            await t.start()
        _requeue(store, delivery)
        handlers = Handlers(config, store, delivery, socket_path)
        d = config.daemon
        server = Server(handlers, d.max_frame_bytes, d.max_connections, {os.getuid(), *d.allow_uids}, set(d.allow_gids))
        aserver = await loop.create_unix_server(server.protocol, sock=listener.bind(socket_path))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("coordd serving %d agents on %s (db %s, %d queued)",
                 len(config.agents), socket_path, store.path, delivery.queued())  # fmt: skip

        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(delivery.worker(q), name=f"deliver:{q.id}") for q in delivery.queues.values()]
            pruner = tg.create_task(retention.run(store, config.retention), name="retention")
            await stop.wait()

            log.info("stopping: no new connections, finishing deliveries in progress")
            aserver.close()
            handlers.accepting = False
            delivery.stop()
            grace = d.shutdown_grace_ms / 1000
            _, late = await asyncio.wait(workers, timeout=grace)
            for task in late:  # their messages stay queued in the database for the next start
                task.cancel()
            pruner.cancel()
            await asyncio.wait_for(server.drain(), grace or None)
    finally:
        if server is not None:
            server.close_all()
        for t in transports.values():
            await t.close()
        await store.close()
        if aserver is not None:
            os.unlink(socket_path)
        os.close(lock_fd)
        log.info("stopped")


def _requeue(store: Store, delivery: Delivery) -> None:
    """Messages left queued by a previous run go out again (at-least-once)."""
    orphans = 0
    for rec in store.load_queued():
        if rec.agent in delivery.queues:
            delivery.enqueue(rec)
        else:
            orphans += 1
    if orphans:
        log.warning("%d queued messages are for agents no longer configured; they stay queued", orphans)
