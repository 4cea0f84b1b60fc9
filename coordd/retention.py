"""Bounded retention: finished messages past max_messages or max_age_days are pruned.

Like Home Assistant's recorder purge: the writer deletes small chunks and yields
between them, never one huge DELETE that would stall sends. Queued messages are
never pruned, nor those a pull agent fetched and has not acknowledged (schema.LEASED:
their lease may end, and then they are fetched again). The pass runs every
prune_interval_s, and sooner when an insert pushes the row count over max_messages; it then prunes
down to a little below the bound (a chunk, at most a tenth of it), so that it runs once per so many
inserts, not at each.

Space: deleted rows' pages go on SQLite's free list and are reused by later
inserts, so under steady load the file stops growing. When more than a quarter
of the file is free pages (after a burst), they are handed back to the file
system with incremental_vacuum, a few pages at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable

from coordd.config import Retention
from coordd.schema import LEASED, TERMINAL, UNINDEX
from coordd.store import Store
from coordd.turns import next_turn

log = logging.getLogger("coordd.retention")


class Pruner:
    """The retention passes, as one task in the daemon's task group; a reload that changes [retention] restarts it."""

    def __init__(
        self,
        store: Store,
        config: Retention,
        spawn: Callable[..., asyncio.Task],
        unacked_pruned: Callable[[str, int], None] = lambda agent, n: None,
    ) -> None:
        self.store = store
        self.config = config
        self.spawn = spawn  # spawn(coroutine, name) -> Task, in the daemon's task group
        self.unacked_pruned = unacked_pruned  # (agent, n): n of its delivered, unacknowledged messages are gone
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = self.spawn(run(self.store, self.config, self.unacked_pruned), "retention")

    def configure(self, config: Retention) -> None:
        if config != self.config:
            self.config = config
            self.stop()
            self.start()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def run(store: Store, config: Retention, unacked_pruned: Callable[[str, int], None]) -> None:
    max_age_s = config.max_age_days * 86400
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(store.overflow.wait(), config.prune_interval_s)
        store.overflow.clear()
        pruned = 0
        while True:
            await store.writer.writable()  # also yields to the loop between chunks
            n = prune_chunk(store, config.max_messages, max_age_s, config.prune_chunk, unacked_pruned)
            if not n:
                break
            pruned += n
            await next_turn()  # other work goes on between chunks
        if pruned:
            log.info("pruned %d finished messages (%d rows left)", pruned, store.rows)
            await store.writer.writable()
            reclaim_if_sparse(store.db)


# What a pass selects of a finished message: its id, and its recipient if it was delivered and never acknowledged.
_PRUNED = (
    "SELECT id, CASE WHEN status = 'delivered' AND acked_at IS NULL THEN agent END"
    f" FROM messages WHERE status IN {TERMINAL} AND NOT ({LEASED})"
)


def prune_chunk(
    store: Store, max_messages: int, max_age_s: float, chunk: int, unacked_pruned: Callable[[str, int], None]
) -> int:
    """Delete up to `chunk` of the oldest finished messages that are over a bound; return how many.
    `unacked_pruned(agent, n)` hears of those delivered that their agent never acknowledged.

    Call after `await store.writer.writable()`. Select and delete run in one step, so a message
    cannot be retried (failed -> queued) in between.
    """
    db = store.db
    over = store.rows - max_messages
    rows: list[tuple[int, str | None]] = []
    if over > 0:
        # Down to a little below the bound: pruning exactly to it, every insert at the bound set off a pass that
        # deleted one row in a transaction of its own (sends 5-10 times slower). Now a pass per `slack` inserts.
        over += min(chunk, max_messages // 10)
        rows = db.execute(f"{_PRUNED} ORDER BY id LIMIT ?", (min(over, chunk),)).fetchall()
    if not rows:
        rows = db.execute(f"{_PRUNED} AND created < ? ORDER BY id LIMIT ?", (time.time() - max_age_s, chunk)).fetchall()
    if not rows:
        return 0
    ids = [r[0] for r in rows]
    marks = ",".join("?" * len(ids))
    try:
        store.writer.commit_now(
            [
                [
                    (f"DELETE FROM attempts WHERE message_id IN ({marks})", ids, False),
                    (UNINDEX.format(marks), ids + ids, False),  # while the rows still hold the text it indexed
                    (f"DELETE FROM messages WHERE id IN ({marks})", ids, False),
                ]
            ]
        )
    except sqlite3.Error as e:  # a delete needs room in the WAL too: the next pass tries again
        log.warning("pruning failed: %s", e)
        return 0
    store.deleted(len(ids))
    for agent, n in Counter(r[1] for r in rows if r[1] is not None).items():
        unacked_pruned(agent, n)
    return len(ids)


def reclaim_if_sparse(db: sqlite3.Connection, pages: int = 1024) -> None:
    """When over a quarter of the file is free pages, hand some back to the file system."""
    try:
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        total = db.execute("PRAGMA page_count").fetchone()[0]
        if free * 4 > total:
            db.execute(f"PRAGMA incremental_vacuum({pages})")
    except sqlite3.Error as e:
        log.warning("handing free pages back failed: %s", e)
