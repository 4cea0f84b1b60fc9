"""Bounded retention: finished messages past max_messages or max_age_days are pruned.

Like Home Assistant's recorder purge: the writer deletes small chunks and yields
between them, never one huge DELETE that would stall sends. Queued messages are
never pruned. The pass runs every prune_interval_s, and sooner when an insert
pushes the row count over max_messages.

Space: deleted rows' pages go on SQLite's free list and are reused by later
inserts, so under steady load the file stops growing. When more than a quarter
of the file is free pages (after a burst), they are handed back to the file
system with incremental_vacuum, a few pages at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from coordd.config import Retention
from coordd.store import Store

log = logging.getLogger("coordd.retention")


class Pruner:
    """The retention passes, as one task in the daemon's task group; a reload that changes [retention] restarts it."""

    def __init__(self, store: Store, config: Retention, spawn: Callable[..., asyncio.Task]) -> None:
        self.store = store
        self.config = config
        self.spawn = spawn  # spawn(coroutine, name) -> Task, in the daemon's task group
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = self.spawn(run(self.store, self.config), "retention")

    def configure(self, config: Retention) -> None:
        if config != self.config:
            self.config = config
            self.stop()
            self.start()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def run(store: Store, config: Retention) -> None:
    max_age_s = config.max_age_days * 86400
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(store.overflow.wait(), config.prune_interval_s)
        store.overflow.clear()
        pruned = 0
        while True:
            await store.writable()  # also yields to the loop between chunks
            n = store.prune_chunk(config.max_messages, max_age_s, config.prune_chunk)
            if not n:
                break
            pruned += n
            await asyncio.sleep(0)  # noqa: sleep-ok: a yield to other work between chunks, not a wait
        if pruned:
            log.info("pruned %d finished messages (%d rows left)", pruned, store.rows)
            await store.writable()
            store.reclaim_if_sparse()
