"""Inbox retention: the passes that keep each inbox directory within [retention] inbox_max_files and
inbox_max_age_days.

The count bound is mostly kept by the inbox transport itself: a delivery that crosses it removes the
oldest files at once (coordd.transports.inbox). A pass, at start and then every prune_interval_s, does
the rest for each inbox agent: it lists the directory afresh (files an agent deleted, or a previous run
or a lower bound left), then removes files past the age bound and past the count, oldest first,
`prune_chunk` at a time with a turn of the loop between chunks, so sends go on meanwhile. An inbox whose
delivery is under way is left for the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from coordd.config import Retention
from coordd.transports import Transport
from coordd.transports.inbox import InboxTransport
from coordd.turns import next_turn

log = logging.getLogger("coordd.retention")


class InboxPruner:
    """One task in the daemon's task group; a reload that changes [retention] rebounds the inboxes and restarts it."""

    def __init__(
        self, config: Retention, transports: Callable[[], list[Transport]], spawn: Callable[..., asyncio.Task]
    ) -> None:
        self.config = config
        self.transports = transports  # the transports in use now (a reload replaces some)
        self.spawn = spawn  # spawn(coroutine, name) -> Task, in the daemon's task group
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = self.spawn(self.run(), "inbox retention")

    def configure(self, config: Retention) -> None:
        if config != self.config:
            self.config = config
            for t in self._inboxes():
                t.bound(config)
            self.stop()
            self.start()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _inboxes(self) -> list[InboxTransport]:
        return [t for t in self.transports() if isinstance(t, InboxTransport)]

    async def run(self) -> None:
        while True:
            removed = 0
            for t in self._inboxes():
                removed += await self.prune(t)
            if removed:
                log.info("removed %d inbox files past [retention] inbox_max_files or inbox_max_age_days", removed)
            await asyncio.sleep(self.config.prune_interval_s)  # noqa: sleep-ok: the pass period, not a wait

    async def prune(self, t: InboxTransport) -> int:
        chunk = self.config.prune_chunk
        if t.busy():
            return 0
        await t.list_files(chunk)
        removed = 0
        while not t.busy():
            n = t.prune_age(time.time(), chunk) or t.prune_count(chunk)
            if not n:
                break
            removed += n
            await next_turn()  # other work goes on between chunks
        return removed
