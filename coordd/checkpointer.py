"""WAL checkpoints, on aiosqlite's thread, so the event loop never waits for one.

SQLite's own autocheckpoint is off: it would run on the writer, i.e. on the loop,
where one costs 1-3 ms here (it fsyncs). The writer says when one is due (after
CHECKPOINT_ROWS changed rows or CHECKPOINT_COMMITS commits); otherwise one runs
after CHECKPOINT_IDLE_S without commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3

import aiosqlite

from coordd.writer import Writer

log = logging.getLogger("coordd.store")

CHECKPOINT_IDLE_S = 1.0


class Checkpointer:
    def __init__(self, path: str, writer: Writer) -> None:
        self.path = path
        self.writer = writer
        self._db: aiosqlite.Connection | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        # Its own connection (and thread): a reader's half-read cursor would make it fail as "locked".
        db = self._db = await aiosqlite.connect(self.path)
        self._task = asyncio.create_task(self._run(db), name="checkpoint")

    async def close(self) -> None:
        task, db = self._task, self._db
        if task is not None and db is not None:  # start() set both
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await db.close()
            self._task = None

    async def _run(self, db: aiosqlite.Connection) -> None:
        """Checkpoint in two steps.

        PASSIVE copies the bulk of the WAL into the database while writes go on. But the
        WAL only starts over from its beginning when a write finds it fully copied, which
        never happens while writes keep coming; so RESTART then copies the few new frames
        with flushes held back meanwhile. Held back, not blocked: requests keep being
        read and their writes gather for the next group commit.
        """
        writer = self.writer
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(writer.checkpoint_due.wait(), CHECKPOINT_IDLE_S)
            writer.checkpoint_due.clear()
            if not writer.checkpointing():
                continue
            try:
                await db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as e:
                log.warning("WAL checkpoint failed: %s", e)
                continue
            writer.hold()
            try:
                async with db.execute("PRAGMA wal_checkpoint(RESTART)") as cur:
                    row = await cur.fetchone()
                assert row is not None  # the pragma always answers one row
                busy, frames, copied = row
                log.debug("checkpoint: busy=%d, %d frames in the WAL, %d copied", busy, frames, copied)
            except sqlite3.Error as e:
                log.warning("WAL checkpoint failed: %s", e)
            finally:
                writer.release()
