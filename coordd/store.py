"""SQLite storage: one writer on the event-loop thread with group commit, reads through aiosqlite.

Why the writer runs on the loop thread: a sequential send's commit costs about
220 us there against about 420 us through aiosqlite's thread, because the
thread hop costs more than the commit itself (measured; see docs/architecture.md).
Group commit keeps the loop free under load: a write only appends to
``_pending`` and the first one schedules ``_flush`` with call_soon, so every
write that arrives while the loop is busy (reading sockets, or committing the
previous batch) lands in the next single transaction.

Queries that scan (history, get, status counts) go through aiosqlite on a
second connection, so a large history page never stalls sends. WAL lets that
reader see committed rows while the writer writes.

A large batch is the exception to group commit: `exclusive` holds the other
writes back while `insert_chunked` stores it in one transaction, a chunk of rows
per turn of the loop, so that the loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import aiosqlite
import msgspec

from coordctl import protocol as p
from coordd.metrics import BATCH_BUCKETS, Histogram

log = logging.getLogger("coordd.store")

SCHEMA_VERSION = 1

# Checkpoint the WAL after this many changed rows or commits, whichever comes first, and after a
# second without commits. SQLite's own autocheckpoint would run on the writer, i.e. on the event
# loop, where one costs 1-3 ms here (it fsyncs); ours runs on aiosqlite's thread (_checkpoint_loop).
CHECKPOINT_ROWS = 4000
CHECKPOINT_COMMITS = 500
CHECKPOINT_IDLE_S = 1.0
# Bookkeeping writes (delivery outcomes) wait this long to gather into one transaction of their
# own, so a send's acknowledgement never waits behind them.
DEFERRED_S = 0.005
# Rows one commit of bookkeeping writes at most (a few ms); the rest commit in the next turn of the loop. Outcomes
# pile up while a large insert holds the writer (Store.exclusive), and one commit of them all would stall the loop.
DEFERRED_MAX_ROWS = 1024
# A deferred write the disk had no room for is tried again after this long (the writes stay in order).
DEFERRED_RETRY_S = 0.5
# SQLite's primary result codes for a full disk and an I/O error (extended codes carry them in the low byte).
SQLITE_FULL, SQLITE_IOERR = 13, 10
FAILURE_LOG_S = 10.0
HISTORY_BATCH = 64  # rows fetched per step of a history page (bodies are at most max_frame_bytes each)

# Each migration takes the schema from version i to i+1. Append, never edit.
MIGRATIONS = [
    """
    CREATE TABLE messages (
        id        INTEGER PRIMARY KEY,
        agent     TEXT NOT NULL,
        sender    TEXT,
        priority  TEXT NOT NULL,
        kind      TEXT,
        tags      TEXT,              -- JSON array, NULL when empty
        key       TEXT,              -- idempotency key
        body      TEXT NOT NULL,
        status    TEXT NOT NULL,     -- queued | delivered | failed | cancelled
        created   REAL NOT NULL,
        delivered REAL,
        attempts  INTEGER NOT NULL DEFAULT 0,
        error     TEXT
    );
    CREATE UNIQUE INDEX messages_key ON messages(key) WHERE key IS NOT NULL;
    CREATE INDEX messages_agent ON messages(agent, id);
    CREATE INDEX messages_sender ON messages(sender, id);
    CREATE INDEX messages_status ON messages(status, id);
    CREATE INDEX messages_created ON messages(created);
    CREATE TABLE attempts (
        message_id INTEGER NOT NULL,
        number     INTEGER NOT NULL,
        started    REAL NOT NULL,
        finished   REAL NOT NULL,
        ok         INTEGER NOT NULL,
        error      TEXT,
        PRIMARY KEY (message_id, number)
    ) WITHOUT ROWID;
    """,
]

INSERT_MESSAGE = (
    "INSERT INTO messages (id, agent, sender, priority, kind, tags, key, body, status, created)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)"
)
INSERT_ATTEMPT = "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?)"
MARK_DELIVERED = "UPDATE messages SET status = 'delivered', delivered = ?, attempts = ?, error = NULL WHERE id = ?"
MARK_FAILED = "UPDATE messages SET status = 'failed', attempts = ?, error = ? WHERE id = ?"
MARK_ATTEMPTED = "UPDATE messages SET attempts = ?, error = ? WHERE id = ?"
MARK_CANCELLED = "UPDATE messages SET status = 'cancelled' WHERE id = ? AND status = 'queued'"
MARK_REQUEUED = "UPDATE messages SET status = 'queued', error = NULL WHERE id = ?"

TERMINAL = "('delivered', 'failed', 'cancelled')"
COLUMNS = "id, agent, sender, priority, kind, tags, key, body, status, created, delivered, attempts, error"

# A write is a list of (sql, params, many): one statement, or executemany when many.
Write = list[tuple[str, Any, bool]]


class StorageError(Exception):
    """The database refused a write; nothing in that write was stored."""


class StorageFull(StorageError):
    """The disk holding the database is full; writes succeed again once space is freed."""


def storage_error(e: sqlite3.Error) -> StorageError:
    """The StorageError for an sqlite3 error: StorageFull when the disk is full."""
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    return (StorageFull if code == SQLITE_FULL else StorageError)(str(e))


def _transient(e: sqlite3.Error) -> bool:
    """Errors that say nothing about the write itself: it may well succeed later."""
    return getattr(e, "sqlite_errorcode", 0) & 0xFF in (SQLITE_FULL, SQLITE_IOERR)


class Record(msgspec.Struct, gc=False):
    """A message as the daemon holds it while it is queued or being delivered.

    gc=False: its fields are scalars and a list of str, so it can be in no reference cycle, and the
    collector need not track the thousands that wait in the queues.
    """

    id: int
    agent: str
    body: str
    priority: str
    created: float
    sender: str | None = None
    kind: str | None = None
    tags: list[str] | None = None
    key: str | None = None
    attempts: int = 0  # total attempts, as stored
    tries: int = 0  # attempts since it was last (re)queued; the retry budget counts these
    error: str | None = None

    def row(self) -> tuple:
        tags = msgspec.json.encode(self.tags).decode() if self.tags else None
        return (self.id, self.agent, self.sender, self.priority, self.kind, tags, self.key, self.body, self.created)


_tags_decoder = msgspec.json.Decoder(list[str])


def info_from_row(r: tuple) -> p.MessageInfo:
    return p.MessageInfo(
        id=r[0], to=r[1], sender=r[2], priority=r[3], kind=r[4],
        tags=_tags_decoder.decode(r[5]) if r[5] else [], key=r[6], body=r[7], status=r[8],
        created=r[9], delivered=r[10], attempts=r[11], error=r[12],
    )  # fmt: skip


def record_from_row(r: tuple) -> Record:
    return Record(
        id=r[0], agent=r[1], sender=r[2], priority=r[3], kind=r[4],
        tags=_tags_decoder.decode(r[5]) if r[5] else None, key=r[6], body=r[7],
        created=r[9], attempts=r[11], error=r[12],
    )  # fmt: skip


class Store:
    def __init__(self, path: str, synchronous: str = "normal") -> None:
        self.path = path
        self.synchronous = synchronous
        self.db: sqlite3.Connection | None = None
        self.reader: aiosqlite.Connection | None = None
        self.rows = 0  # messages stored; kept in step with every insert and delete
        self.max_rows = 0  # retention.max_messages: an insert past it sets `overflow`
        self.overflow = asyncio.Event()
        self.pruned = 0
        self.commits = 0
        self.commit_sizes = Histogram(BATCH_BUCKETS)  # writes per commit
        self._next_id = 1
        self._pending: list[tuple[Write, asyncio.Future]] = []  # acknowledgements wait for these
        self._deferred: list[tuple[Write, asyncio.Future]] = []  # nobody waits for these in a hurry
        self._flush_handle: asyncio.Handle | None = None
        self._deferred_handle: asyncio.Handle | None = None
        self._checkpointer: asyncio.Task | None = None
        self._checkpoint_due = asyncio.Event()
        self._checkpointed_at = (0, 0)  # (total_changes, commits) at the last checkpoint
        self._held = 0  # flushes wait while a RESTART checkpoint runs, or a large insert (holds at once)
        self._writable = asyncio.Event()  # set while not held
        self._exclusive = asyncio.Lock()  # one large insert at a time
        self._writable.set()
        self._retrying = False  # deferred writes are waiting for the disk
        self._failure_logged = -FAILURE_LOG_S
        self._failures_unlogged = 0

    # --- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the database. A file that is not a coordd database is an error, never replaced.

        An existing file must pass SQLite's quick_check: a corrupt database stops the start
        with an error rather than serving (and later failing) half a history.
        """
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            if os.path.lexists(self.path) and not os.path.isfile(self.path):
                raise StorageError(f"store.path {self.path} exists but is not a regular file: "
                                   "point store.path at a file")  # fmt: skip
            existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        except OSError as e:
            raise StorageError(f"cannot use store.path {self.path}: {e.strerror}") from None
        db = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if existed:  # read-only checks first: a file that is not ours must not be touched
                self._check_integrity(db)
                self._schema_version(db)
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError(f"cannot switch {self.path} to WAL mode (got {mode})")
            db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA journal_size_limit = 67108864")  # truncate the WAL back to 64 MiB after checkpoints
            db.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints run off the loop: _checkpoint_loop
            self._migrate(db)
            self._next_id = (db.execute("SELECT max(id) FROM messages").fetchone()[0] or 0) + 1
            self.rows = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        except sqlite3.DatabaseError as e:
            if db is not None:
                db.close()
            raise StorageError(f"cannot open database {self.path}: {e}. coordd never replaces it: move it aside "
                               "(keep it for recovery, e.g. sqlite3 .recover) or set store.path to another file") from None  # fmt: skip
        except StorageError:
            db.close()
            raise
        os.chmod(self.path, 0o600)
        self.db = db
        self.reader = await aiosqlite.connect(self.path)
        await self.reader.execute("PRAGMA query_only = 1")
        # Its own connection (and thread): a reader's half-read cursor would make it fail as "locked".
        self._checkpoint_db = await aiosqlite.connect(self.path)
        self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="checkpoint")

    def _check_integrity(self, db: sqlite3.Connection) -> None:
        problems = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StorageError(f"database {self.path} is corrupt ({'; '.join(problems)}). coordd never replaces it: "
                               "move it aside (keep it for recovery, e.g. sqlite3 .recover) or set store.path "
                               "to another file")  # fmt: skip

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = self._schema_version(db)
        for i in range(version, SCHEMA_VERSION):
            db.execute("BEGIN")
            for stmt in MIGRATIONS[i].split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version = {i + 1}")
            db.execute("COMMIT")
            log.info("migrated %s to schema version %d", self.path, i + 1)

    def _schema_version(self, db: sqlite3.Connection) -> int:
        """The file's coordd schema version (0: a new, empty database); an error for anything else."""
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} has schema version {version}, newer than this coordd ({SCHEMA_VERSION}): upgrade coordd"
            )
        if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StorageError(f"{self.path} is an SQLite database but not a coordd one: choose another store.path")
        return version

    async def _checkpoint_loop(self) -> None:
        """Checkpoint on aiosqlite's thread, in two steps, so the loop never waits for one.

        PASSIVE copies the bulk of the WAL into the database while writes go on. But the
        WAL only starts over from its beginning when a write finds it fully copied, which
        never happens while writes keep coming; so RESTART then copies the few new frames
        with flushes held back meanwhile. Held back, not blocked: requests keep being
        read and their writes gather for the next group commit.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._checkpoint_due.wait(), CHECKPOINT_IDLE_S)
            self._checkpoint_due.clear()
            if self.commits == self._checkpointed_at[1]:
                continue
            self._checkpointed_at = (self.db.total_changes, self.commits)
            try:
                await self._checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as e:
                log.warning("WAL checkpoint failed: %s", e)
                continue
            self._hold()
            try:
                async with self._checkpoint_db.execute("PRAGMA wal_checkpoint(RESTART)") as cur:
                    busy, frames, copied = await cur.fetchone()
                log.debug("checkpoint: busy=%d, %d frames in the WAL, %d copied", busy, frames, copied)
            except sqlite3.Error as e:
                log.warning("WAL checkpoint failed: %s", e)
            finally:
                self._release()

    def _hold(self) -> None:
        self._held += 1
        self._writable.clear()

    def _release(self) -> None:
        self._held -= 1
        if not self._held:
            self._writable.set()
            self._resume()

    def _note_commit(self) -> None:
        self.commits += 1
        changed, (last_changed, last_commits) = self.db.total_changes, self._checkpointed_at
        if changed - last_changed >= CHECKPOINT_ROWS or self.commits - last_commits >= CHECKPOINT_COMMITS:
            self._checkpoint_due.set()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            await self._checkpoint_db.close()
        for handle in (self._flush_handle, self._deferred_handle):
            if handle is not None:
                handle.cancel()
        if self.db is not None and self.db.in_transaction:  # a large insert cut short: it was never acknowledged
            self.db.execute("ROLLBACK")
        self._held = 0
        self._flush()
        self._deferred_handle = None
        batch, self._deferred = self._deferred, []
        self._commit_group(batch, retry=False)
        if self.reader is not None:
            await self.reader.close()
            self.reader = None
        if self.db is not None:
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:  # everything is committed in the WAL; the next start checkpoints it
                log.warning("final WAL checkpoint failed: %s", e)
            self.db.close()
            self.db = None

    # --- the write path ---------------------------------------------------------

    def allocate_ids(self, n: int) -> range:
        """Ids are handed out in arrival order, so id order is acceptance order."""
        first = self._next_id
        self._next_id += n
        return range(first, first + n)

    def insert(self, records: list[Record]) -> asyncio.Future:
        """Store new messages; the future resolves once they are committed."""
        fut = self.write([(INSERT_MESSAGE, [r.row() for r in records], True)])
        self.rows += len(records)
        if self.max_rows and self.rows > self.max_rows:
            self.overflow.set()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception() is None or self._uncount(len(records)))
        return fut

    def _uncount(self, n: int) -> None:
        self.rows -= n

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Be the only writer for the block (for insert_chunked): other writes wait, pruning too.

        The writes already waiting are committed first, so writes still commit in the order they came."""
        async with self._exclusive:
            while self._held:  # a checkpoint is finishing
                await self._writable.wait()
            self._hold()
            try:
                if self._pending:
                    batch, self._pending = self._pending, []
                    self._commit_group(batch)
                yield
            finally:
                self._release()

    async def insert_chunked(self, records: list[Record], chunk: int) -> None:
        """Within exclusive(): store new messages in one transaction, `chunk` rows per turn of the event loop.
        All or nothing: StorageError (or StorageFull) and none is stored."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            for i in range(0, len(records), chunk):
                await asyncio.sleep(0)  # let the loop serve other clients; their writes wait for the commit
                db.executemany(INSERT_MESSAGE, [r.row() for r in records[i : i + chunk]])
            await asyncio.sleep(0)  # the commit writes every page of the WAL: a turn of its own
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if not isinstance(e, sqlite3.Error):
                raise
            self._log_failure(e)
            raise storage_error(e) from None
        self.rows += len(records)
        if self.max_rows and self.rows > self.max_rows:
            self.overflow.set()
        self.commit_sizes.observe(1)
        self._note_commit()

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

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._held:  # else a checkpoint is finishing; it flushes when done
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
                    log.error("cannot record %d delivery outcomes (%s); retrying every %g s", len(batch), e,
                              DEFERRED_RETRY_S)  # fmt: skip
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
            if self.max_rows and self.rows > self.max_rows:
                self.overflow.set()  # messages just became finished, so prunable: the pruner looks again
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
            for ops in writes:
                for sql, params, many in ops:
                    if many:
                        db.executemany(sql, params)
                    else:
                        db.execute(sql, params)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite rolls back by itself on some errors (e.g. disk full)
                db.execute("ROLLBACK")
            raise
        self.commit_sizes.observe(len(writes))
        self._note_commit()

    # --- reads on the loop thread (cheap, indexed, needed to decide an answer) ---

    def find_key(self, key: str) -> tuple[int, str] | None:
        return self.db.execute("SELECT id, status FROM messages WHERE key = ?", (key,)).fetchone()

    def load_queued(self) -> list[Record]:
        cur = self.db.execute(f"SELECT {COLUMNS} FROM messages WHERE status = 'queued' ORDER BY id")
        return [record_from_row(r) for r in cur]

    def load_record(self, message_id: int) -> tuple[Record, str] | None:
        r = self.db.execute(f"SELECT {COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        return (record_from_row(r), r[8]) if r else None

    # --- reads through aiosqlite ---------------------------------------------------

    async def get(self, message_id: int) -> p.Message | None:
        async with self.reader.execute(f"SELECT {COLUMNS} FROM messages WHERE id = ?", (message_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        async with self.reader.execute(
            "SELECT number, started, finished, ok, error FROM attempts WHERE message_id = ? ORDER BY number",
            (message_id,),
        ) as cur:
            attempts = [p.Attempt(number=a[0], started=a[1], finished=a[2], ok=bool(a[3]), error=a[4]) async for a in cur]
        return p.Message(message=info_from_row(row), attempts=attempts)

    async def history(self, q: p.History, max_bytes: int = 1 << 62) -> p.Page:
        """A page of q.limit messages at most, newest first; it stops early once the bodies pass max_bytes.

        Rows are fetched HISTORY_BATCH at a time, so a page of large bodies never holds
        more than about max_bytes plus one batch in memory.
        """
        where, args = [], []
        for column, value in (("agent", q.agent), ("sender", q.sender), ("status", q.status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if q.since is not None:
            where.append("created >= ?")
            args.append(q.since)
        if q.until is not None:
            where.append("created < ?")
            args.append(q.until)
        if q.contains:
            where.append("instr(body, ?) > 0")
            args.append(q.contains)
        if q.cursor is not None:
            where.append("id < ?")
            args.append(q.cursor)
        sql = f"SELECT {COLUMNS} FROM messages"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(q.limit + 1)  # one extra row tells whether another page exists
        rows: list[tuple] = []
        size = 0
        async with self.reader.execute(sql, args) as cur:
            while len(rows) <= q.limit and size <= max_bytes:
                batch = await cur.fetchmany(min(HISTORY_BATCH, q.limit + 1 - len(rows)))
                if not batch:
                    break
                rows += batch
                size += sum(len(r[7]) for r in batch)
        more = len(rows) > q.limit or size > max_bytes
        messages = [info_from_row(r) for r in rows[: q.limit]]
        return p.Page(messages=messages, cursor=messages[-1].id if more and messages else None)

    async def counts(self) -> dict[tuple[str, str], int]:
        """Stored messages by (agent, status)."""
        async with self.reader.execute("SELECT agent, status, count(*) FROM messages GROUP BY agent, status") as cur:
            return {(a, s): n async for a, s, n in cur}

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(self.path + suffix).st_size
            except FileNotFoundError:
                pass
        return total

    # --- retention, on the writer, in small chunks ---------------------------------

    async def writable(self) -> None:
        """Wait until the writer may commit directly (no checkpoint is finishing)."""
        await self._writable.wait()

    def prune_chunk(self, max_messages: int, max_age_s: float, chunk: int) -> int:
        """Delete up to `chunk` of the oldest finished messages that are over a bound; return how many.

        Call after `await writable()`. Select and delete run in one step, so a message
        cannot be retried (failed -> queued) in between.
        """
        db = self.db
        over = self.rows - max_messages
        ids: list[int] = []
        if over > 0:
            ids = [r[0] for r in db.execute(
                f"SELECT id FROM messages WHERE status IN {TERMINAL} ORDER BY id LIMIT ?", (min(over, chunk),)
            )]  # fmt: skip
        if not ids:
            ids = [r[0] for r in db.execute(
                f"SELECT id FROM messages WHERE status IN {TERMINAL} AND created < ? ORDER BY id LIMIT ?",
                (time.time() - max_age_s, chunk),
            )]  # fmt: skip
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        try:
            self._commit([[
                (f"DELETE FROM attempts WHERE message_id IN ({marks})", ids, False),
                (f"DELETE FROM messages WHERE id IN ({marks})", ids, False),
            ]])  # fmt: skip
        except sqlite3.Error as e:  # a delete needs room in the WAL too: the next pass tries again
            log.warning("pruning failed: %s", e)
            return 0
        self.rows -= len(ids)
        return len(ids)

    def reclaim_if_sparse(self, pages: int = 1024) -> None:
        """When over a quarter of the file is free pages, hand some back to the file system."""
        try:
            free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
            total = self.db.execute("PRAGMA page_count").fetchone()[0]
            if free * 4 > total:
                self.db.execute(f"PRAGMA incremental_vacuum({pages})")
        except sqlite3.Error as e:
            log.warning("handing free pages back failed: %s", e)

