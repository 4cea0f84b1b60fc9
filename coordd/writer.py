"""The write path: one writer on the event-loop thread, with group commit and deferred bookkeeping.

Why on the loop thread: a sequential send's commit costs about 220 us there against
about 420 us through aiosqlite's thread, because the thread hop costs more than the
commit itself (measured; see docs/architecture.md). Group commit keeps the loop free
under load: a write only appends to ``_pending`` and the first one schedules
``_flush`` with call_soon, so every write that arrives while the loop is busy
(reading sockets, or committing the previous batch) lands in the next single
transaction. Deferred writes (delivery outcomes) gather for DEFERRED_S and commit in
a transaction of their own, after the acknowledged ones. The checkpointer holds the
writer back while it restarts the WAL (`hold`/`release`); the writer tells it when a
checkpoint is due.

A large batch is the exception to group commit: `exclusive` holds the other writes
back (a hold like the checkpointer's) while `commit_in_turns` stores it in one
transaction, a chunk of rows per turn of the loop, so that the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable

from coordd.model import Histogram, StorageError, StorageFull
from coordd.schema import Write
from coordd.turns import next_turn

log = logging.getLogger("coordd.store")

# Checkpoint the WAL after this many changed rows or commits, whichever comes first (coordd.checkpointer
# also does after a second without commits).
CHECKPOINT_ROWS = 4000
CHECKPOINT_COMMITS = 500
# Bookkeeping writes (delivery outcomes) wait this long to gather into one transaction of their
# own, so a send's acknowledgement never waits behind them.
DEFERRED_S = 0.005
# Rows one commit of bookkeeping writes at most (a few ms); the rest commit in the next turn of the loop. Outcomes
# pile up while a large insert holds the writer (`exclusive`), and one commit of them all would stall the loop.
DEFERRED_MAX_ROWS = 1024
# A deferred write the disk had no room for is tried again after this long (the writes stay in order).
DEFERRED_RETRY_S = 0.5
# SQLite's primary result codes for a full disk and an I/O error (extended codes carry them in the low byte).
SQLITE_FULL, SQLITE_IOERR = 13, 10
FAILURE_LOG_S = 10.0
# Writes per group commit: 1 while sends come one at a time, more as they crowd in.
COMMIT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def storage_error(e: sqlite3.Error) -> StorageError:
    """The StorageError for an sqlite3 error: StorageFull when the disk is full."""
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    return (StorageFull if code == SQLITE_FULL else StorageError)(str(e))


def _transient(e: sqlite3.Error) -> bool:
    """Errors that say nothing about the write itself: it may well succeed later."""
    return getattr(e, "sqlite_errorcode", 0) & 0xFF in (SQLITE_FULL, SQLITE_IOERR)


class Writer:
    def __init__(self, db: sqlite3.Connection, outcomes_recorded: Callable[[], None]) -> None:
        self.db = db
        self.outcomes_recorded = outcomes_recorded  # deferred writes committed: finished messages are prunable now
        self.commits = 0
        self.commit_sizes = Histogram(COMMIT_BUCKETS)  # writes per commit
        self.checkpoint_due = asyncio.Event()  # set when enough was written since `checkpointed`
        self._checkpointed_at = (0, 0)  # (total_changes, commits) at the last checkpoint
        self._pending: list[tuple[Write, asyncio.Future]] = []  # acknowledgements wait for these
        self._deferred: list[tuple[Write, asyncio.Future]] = []  # nobody waits for these in a hurry
        self._flush_handle: asyncio.Handle | None = None
        self._deferred_handle: asyncio.Handle | None = None
        self._held = 0  # flushes wait while a RESTART checkpoint runs, or a large insert (holds at once)
        self._writable = asyncio.Event()  # set while not held
        self._writable.set()
        self._exclusive = asyncio.Lock()  # one large insert at a time
        self._retrying = False  # deferred writes are waiting for the disk
        self._failure_logged = -FAILURE_LOG_S
        self._failures_unlogged = 0

    def write(self, ops: Write, *, deferred: bool = False) -> asyncio.Future:
        """Queue a write for the next group commit; the future resolves once it is committed.

        Deferred writes gather for DEFERRED_S and commit in a transaction of their own,
        after the pending ones: for bookkeeping that no reply is waiting on.
        """
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if deferred:
            self._deferred.append((ops, fut))
            if self._deferred_handle is None and not self._held:
                self._deferred_handle = loop.call_later(DEFERRED_S, self._flush_deferred)
        else:
            self._pending.append((ops, fut))
            if self._flush_handle is None and not self._held:
                self._flush_handle = loop.call_soon(self._flush)
        return fut

    def last_writes(self) -> list[asyncio.Future]:
        """The futures of the last write waiting in each queue: once both are done, so is every write queued
        before them (each queue commits in order; the deferred one after the other, unless its timer came
        first)."""
        return [queue[-1][1] for queue in (self._pending, self._deferred) if queue]

    def last_deferred(self, fut: asyncio.Future) -> bool:
        """fut's deferred write is the last one waiting: rows added to its executemany parameters now commit with
        it, in the order they came (a write that gathers rows as they come, as delivery outcomes do)."""
        return bool(self._deferred) and self._deferred[-1][1] is fut

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._held:  # else a checkpoint or a large insert holds the writer; release flushes
            batch, self._pending = self._pending, []
            self._commit_group(batch)

    def _flush_deferred(self) -> None:
        self._deferred_handle = None
        if not self._held:
            n = rows = 0
            while n < len(self._deferred) and rows < DEFERRED_MAX_ROWS:
                rows += sum(len(params) if many else 1 for _, params, many in self._deferred[n][0])
                n += 1
            batch, self._deferred = self._deferred[:n], self._deferred[n:]
            self._commit_group(batch, retry=True)
            if self._deferred and self._deferred_handle is None:  # (a failed group is retried later instead)
                self._deferred_handle = asyncio.get_running_loop().call_soon(self._flush_deferred)

    def _resume(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pending and self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        if self._deferred and self._deferred_handle is None:
            self._deferred_handle = loop.call_later(DEFERRED_S, self._flush_deferred)

    def _commit_group(self, batch: list[tuple[Write, asyncio.Future]], retry: bool = False) -> None:
        """Commit a group of writes in one transaction and resolve their futures.

        retry: for deferred bookkeeping (delivery outcomes). When the disk is full or
        failing, the group goes back to the head of the deferred writes and is tried again
        after DEFERRED_RETRY_S, so outcomes are recorded once space is freed instead of lost.
        """
        if not batch:
            return
        try:
            self._commit([ops for ops, _ in batch])
        except sqlite3.Error as e:
            if retry and _transient(e):
                if not self._retrying:
                    log.error(
                        "cannot record %d delivery outcomes (%s); retrying every %g s", len(batch), e, DEFERRED_RETRY_S
                    )
                self._retrying = True
                self._deferred[:0] = batch
                if self._deferred_handle is not None:
                    self._deferred_handle.cancel()
                self._deferred_handle = asyncio.get_running_loop().call_later(DEFERRED_RETRY_S, self._flush_deferred)
                return
            # One bad write must not fail its neighbours: commit each alone to find it.
            for ops, fut in batch:
                try:
                    self._commit([ops])
                except sqlite3.Error as e:
                    self._log_failure(e)
                    fut.set_exception(storage_error(e))
                else:
                    fut.set_result(None)
            return
        if retry:
            if self._retrying:
                log.warning("delivery outcomes are recorded again")
                self._retrying = False
            self.outcomes_recorded()  # messages just became finished, so prunable
        for _, fut in batch:
            fut.set_result(None)

    def _log_failure(self, e: sqlite3.Error) -> None:
        """Log a failed write, at most once per FAILURE_LOG_S: a full disk fails every send."""
        now = time.monotonic()
        if now - self._failure_logged < FAILURE_LOG_S:
            self._failures_unlogged += 1
            return
        more = f" (and {self._failures_unlogged} more since the last report)" if self._failures_unlogged else ""
        log.error("write failed: %s%s", e, more)
        self._failure_logged, self._failures_unlogged = now, 0

    def _commit(self, writes: list[Write]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._execute(writes)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite rolls back by itself on some errors (e.g. disk full)
                db.execute("ROLLBACK")
            raise
        self.commit_sizes.observe(len(writes))
        self._note_commit()

    def _execute(self, writes: Iterable[Write]) -> None:
        db = self.db
        for ops in writes:
            for sql, params, many in ops:
                if many:
                    db.executemany(sql, params)
                else:
                    db.execute(sql, params)

    def commit_now(self, writes: list[Write]) -> None:
        """Commit at once, in one transaction (retention's deletes: call after `await writable()`)."""
        self._commit(writes)

    async def writable(self) -> None:
        """Wait until the writer may commit directly (no checkpoint is finishing, no large insert runs)."""
        await self._writable.wait()

    # --- a large insert -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Be the only writer for the block (for commit_in_turns): other writes wait, pruning too.

        The writes already waiting are committed first, so writes still commit in the order they came."""
        async with self._exclusive:
            while self._held:  # a checkpoint is finishing
                await self._writable.wait()
            self.hold()
            try:
                if self._pending:
                    batch, self._pending = self._pending, []
                    self._commit_group(batch)
                yield
            finally:
                self.release()

    async def commit_in_turns(self, writes: Iterable[Write]) -> None:
        """Within exclusive(): commit writes in one transaction, one per turn of the event loop (the loop
        serves other clients in between; their writes wait). All or nothing: StorageError (or StorageFull)
        and none is committed."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            for ops in writes:
                await next_turn()  # other clients are served between chunks; their writes wait
                self._execute((ops,))
            await next_turn()  # the commit writes every page of the WAL: a turn of its own
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if not isinstance(e, sqlite3.Error):
                raise
            self._log_failure(e)
            raise storage_error(e) from None
        self.commit_sizes.observe(1)
        self._note_commit()

    # --- for the checkpointer -------------------------------------------------------

    def _note_commit(self) -> None:
        self.commits += 1
        changed, (last_changed, last_commits) = self.db.total_changes, self._checkpointed_at
        if changed - last_changed >= CHECKPOINT_ROWS or self.commits - last_commits >= CHECKPOINT_COMMITS:
            self.checkpoint_due.set()

    def checkpointing(self) -> bool:
        """A checkpoint starts, unless nothing was committed since the last one (False)."""
        if self.commits == self._checkpointed_at[1]:
            return False
        self._checkpointed_at = (self.db.total_changes, self.commits)
        return True

    def hold(self) -> None:
        """Flushes wait (writes still gather) until `release`. Holds count: the checkpointer's and a large
        insert's may overlap, and the writer waits until both are released."""
        self._held += 1
        self._writable.clear()

    def release(self) -> None:
        self._held -= 1
        if not self._held:
            self._writable.set()
            self._resume()

    def close(self) -> None:
        """Commit what waits, deferred writes too, now."""
        for handle in (self._flush_handle, self._deferred_handle):
            if handle is not None:
                handle.cancel()
        if self.db.in_transaction:  # a large insert cut short: it was never acknowledged
            self.db.execute("ROLLBACK")
        self._held = 0
        self._flush()
        self._deferred_handle = None
        batch, self._deferred = self._deferred, []
        self._commit_group(batch, retry=False)
