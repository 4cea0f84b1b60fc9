"""The database: its files (0600, never through a link, one daemon per database), and the parts that use it.

- schema.py: the tables, their migrations, the SQL, rows as objects;
- writer.py: the write path on the loop thread, with group commit and deferred writes;
- checkpointer.py: WAL checkpoints off the loop;
- reads.py: lookups on the loop thread, scans through aiosqlite;
- retention.py: pruning finished messages, handing free pages back.

`Store` opens the files, builds those parts on the connections it opened, and is what
the rest of the daemon uses: it counts the rows and hands out message ids. A large
batch is stored by `insert_chunked` within `exclusive` (see coordd.writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import stat
from collections.abc import Awaitable, Callable

import aiosqlite

from coordctl import protocol as p
from coordd import lockfile
from coordd.checkpointer import Checkpointer
from coordd.model import Histogram, Record, StorageError, StorageFull, rows
from coordd.reads import AckState, Reads
from coordd.schema import (
    INDEX_MISSING,
    INDEX_NEW,
    INDEXED,
    INSERT_MESSAGE,
    REBUILD_INDEX,
    Write,
    check_integrity,
    migrate,
    schema_version,
)
from coordd.writer import Writer

__all__ = ["StorageError", "StorageFull", "Store"]

log = logging.getLogger("coordd.store")

# A search waits at most this long for the messages acknowledged before it to be indexed (Store.indexed).
INDEX_WAIT_S = 2.0
# New messages are indexed for search in one write this long after the first of them is stored, or once this
# many ids wait, whichever comes first (a search hurries it). FTS5 writes a segment per transaction: indexing
# 15 rows a transaction cost 24 us a row here, 100 rows 5.6 us, 750 rows 4.0 us (docs/architecture.md).
INDEX_DELAY_S = 0.1
INDEX_MAX_IDS = 256
NO_ID = 1 << 63  # above every message id


def _make_private(path: str, create: bool = False) -> int | None:
    """Make a store file 0600 and return its size (None: there is none, and create is false).

    Before SQLite opens the database: it gives a WAL and SHM it creates the database's mode, so that
    must be 0600 first; and an earlier run or another tool may have left any of them looser. Its mode
    only, never its content, even for a file then refused as not a coordd database. Through an fd opened
    without following a link: a link is refused, since SQLite would follow one and put the database and
    its WAL wherever it points."""
    try:
        fd = os.open(
            path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o600
        )
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise _not_a_file(path) from None
    except OSError as e:
        hint = ": set store.path to the file itself" if create and e.errno == errno.ELOOP else ""
        raise StorageError(f"cannot use {path}: {lockfile.reason(e)}{hint}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(path)
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
            log.info("%s was mode %04o: made it 0600", path, stat.S_IMODE(st.st_mode))
        return st.st_size
    except OSError as e:
        raise StorageError(f"cannot use {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _not_a_file(path: str) -> StorageError:
    return StorageError(
        f"{path} exists but is not a regular file: point store.path at a file (coordd keeps it, "
        "and its -wal, -shm and .lock beside it)"
    )


def _warn_if_open_to_others(directory: str) -> None:
    """The store's files are 0600 whatever their directory's mode, but a directory others can list shows
    that they exist, and one they can write lets them plant files, or delete ours."""
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    if mode & 0o006:
        can = "write to it" if mode & 0o002 else "list it"
        log.warning(
            "the store directory %s is mode %04o: other users can %s (coordd's files in it are 0600 "
            "all the same); chmod 700 it",
            directory,
            mode,
            can,
        )


class Store:
    def __init__(self, path: str, synchronous: str = "normal", max_rows: int = 0) -> None:
        self.path = path
        self.synchronous = synchronous
        # Set by `open`, which builds the parts on the connections it opens; `close` undoes it, last first.
        self.db: sqlite3.Connection  # the writer's; the loop thread's reads use it too
        self.writer: Writer
        self.reads: Reads
        self.checkpointer: Checkpointer
        self._closers: list[Callable[[], Awaitable[None] | None]] = []
        self.rows = 0  # messages stored; kept in step with every insert and delete
        self.max_rows = max_rows  # retention.max_messages: an insert past it sets `overflow`
        self.overflow = asyncio.Event()  # the pruner should look now
        self.pruned = 0
        self._next_id = 1
        # Search: the ids [first, last] waiting to be indexed (see insert), the timer that indexes them, and the
        # future of the index write queued in the writer.
        self._index_span: list[int] = []
        self._index_timer: asyncio.TimerHandle | None = None
        self._indexing: asyncio.Future | None = None
        self._index_failed_from = NO_ID  # the first id of an index write that failed (the next one covers it)
        self._lock_fd: int | None = None  # `<db>.lock`, held from open to close

    def configure(self, max_rows: int) -> None:
        """retention.max_messages, at a reload."""
        self.max_rows = max_rows

    # --- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the database. A file that is not a coordd database is an error, never replaced.

        An existing file must pass SQLite's quick_check: a corrupt database stops the start
        with an error rather than serving (and later failing) half a history.
        """
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            _warn_if_open_to_others(directory)
        except OSError as e:
            raise StorageError(f"cannot use store.path {self.path}: {e.strerror}") from None
        self._lock()
        existed = bool(_make_private(self.path, create=True))  # an empty file is a new database to SQLite
        _make_private(self.path + "-wal")
        _make_private(self.path + "-shm")
        db = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if existed:  # read-only checks first: a file that is not ours must keep its content
                check_integrity(db, self.path)
                schema_version(db, self.path)
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError(f"cannot switch {self.path} to WAL mode (got {mode})")
            db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA journal_size_limit = 67108864")  # truncate the WAL back to 64 MiB after checkpoints
            db.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints run off the loop: coordd.checkpointer
            migrate(db, self.path)
            self._next_id = (db.execute("SELECT max(id) FROM messages").fetchone()[0] or 0) + 1
            self.rows = db.execute("SELECT count(*) FROM messages").fetchone()[0]
            self._index_missing(db)
        except sqlite3.DatabaseError as e:
            if db is not None:
                db.close()
            raise StorageError(
                f"cannot open database {self.path}: {e}. coordd never replaces it: move it aside "
                "(keep it for recovery, e.g. sqlite3 .recover) or set store.path to another file"
            ) from None
        except StorageError:
            if db is not None:
                db.close()
            raise
        self.db = db
        self._closers.append(self._close_db)
        self.writer = Writer(db, self._outcomes_recorded)
        self._closers.append(self.writer.close)  # the final commit
        self._closers.append(self._index_now)  # ... with the index write still waiting for its timer
        reader = await aiosqlite.connect(self.path)
        self._closers.append(reader.close)
        await reader.execute("PRAGMA query_only = 1")
        self.reads = Reads(db, reader)
        self.checkpointer = Checkpointer(self.path, self.writer)
        await self.checkpointer.start()
        self._closers.append(self.checkpointer.close)

    def _index_missing(self, db: sqlite3.Connection) -> None:
        """Index for search the messages a crash left unindexed: their deferred index write never committed."""
        indexed = db.execute(INDEXED).fetchone()[0]
        if indexed != self.rows:  # never more (retention unindexes in the deleting transaction), but then: rebuild
            db.execute(INDEX_MISSING if indexed < self.rows else REBUILD_INDEX)
            log.info("indexed %d messages for search that the last run had not", abs(self.rows - indexed))

    def _lock(self) -> None:
        """One daemon per database, whatever socket it serves: an flock on `<db>.lock`, held until close.
        A second daemon on this database would deliver every queued message a second time."""
        lock_path = self.path + ".lock"
        try:
            self._lock_fd = lockfile.hold(lock_path)
        except lockfile.Held as e:
            raise StorageError(
                f"another coordd (pid {e.holder}) is using the database {self.path}: stop it first, "
                "or give this one another store.path"
            ) from None
        except OSError as e:
            raise StorageError(f"cannot use the lock file {lock_path}: {lockfile.reason(e)}") from None

    async def close(self) -> None:
        """Undo what `open` did, last first: the checkpointer, the reader, the final commit, the database."""
        while self._closers:
            done = self._closers.pop()()
            if done is not None:
                await done
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # last: until the final commit, no other daemon may open the database
            self._lock_fd = None

    # --- writes ------------------------------------------------------------------

    def allocate_ids(self, n: int) -> int:
        """n consecutive ids, the first of them returned. Ids are handed out in arrival order, so id order is
        acceptance order."""
        first = self._next_id
        self._next_id += n
        return first

    def insert(self, records: list[Record], *, also: Write | None = None, deferred: bool = False) -> asyncio.Future:
        """Store new messages, and `also` (other writes) in the same transaction (a bounce with the failure it
        reports, their origin); the future resolves once they are committed. `deferred`: see Writer.write."""
        ops: Write = [(INSERT_MESSAGE, rows(records), True)]
        fut = self.writer.write(ops + also if also else ops, deferred=deferred)  # also after: it may update them
        self.rows += len(records)
        if self.max_rows and self.rows > self.max_rows:
            self.overflow.set()
        n, first, last = len(records), records[0].id, records[-1].id

        def committed(f: asyncio.Future) -> None:  # runs before the sender hears of it: a search then waits for it
            if f.cancelled() or f.exception() is not None:
                self.rows -= n
            else:
                self._index_later(first, last)

        fut.add_done_callback(committed)
        return fut

    def _index_later(self, first: int, last: int) -> None:
        """Index the committed ids first to last for search, not in the acknowledged transaction but in a
        deferred write that gathers every insert of the next INDEX_DELAY_S (or INDEX_MAX_IDS ids): FTS5 writes
        out a segment per transaction, which cost a sequential send about 115 us in the acknowledged one and
        still 20-70 us in a deferred one every 5 ms (docs/architecture.md). Until the write commits, every
        insert widens its one statement."""
        span = self._index_span
        if self._index_timer is not None or (self._indexing is not None and not self._indexing.done()):
            span[0], span[1] = min(span[0], first), max(span[1], last)
        else:
            self._index_span = span = [min(first, self._index_failed_from), last]
            self._index_failed_from = NO_ID
            self._index_timer = asyncio.get_running_loop().call_later(INDEX_DELAY_S, self._index_now)
        if self._index_timer is not None and span[1] - span[0] >= INDEX_MAX_IDS:
            self._index_now()

    def _index_now(self) -> None:
        """Queue the waiting index write in the writer (its next deferred commit)."""
        if self._index_timer is None:
            return
        self._index_timer.cancel()
        self._index_timer = None
        span = self._index_span
        self._indexing = self.writer.write([(INDEX_NEW, span, False)], deferred=True)
        self._indexing.add_done_callback(lambda f: self._indexed(f, span))

    def _indexed(self, fut: asyncio.Future, span: list[int]) -> None:
        if fut.cancelled() or fut.exception() is not None:  # the writer logged it (and retries a full disk itself)
            self._index_failed_from = min(self._index_failed_from, span[0])  # the next index write tries again

    async def indexed(self, timeout: float = INDEX_WAIT_S) -> None:
        """Wait until the messages stored so far are indexed for search (a few ms: the writer's next deferred
        commit), or `timeout` seconds at most (the writer is held: a large batch, a full disk)."""
        self._index_now()
        if self._indexing is not None and not self._indexing.done():
            await asyncio.wait([self._indexing], timeout=timeout)

    async def written(self) -> None:
        """Return once every write queued so far has committed (or failed: this does not raise)."""
        waiting = [fut for fut in self.writer.last_writes() if not fut.done()]
        if waiting:
            await asyncio.wait(waiting)

    def exclusive(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Be the only writer for the block (for insert_chunked): other writes wait, pruning too."""
        return self.writer.exclusive()

    async def insert_chunked(self, records: list[Record], chunk: int) -> None:
        """Within exclusive(): store new messages in one transaction, `chunk` rows per turn of the event loop.
        All or nothing: StorageError (or StorageFull) and none is stored."""
        chunks = (  # each built in its turn; indexed in the same transaction, a chunk a statement
            [(INSERT_MESSAGE, rows(c), True), (INDEX_NEW, (c[0].id, c[-1].id), False)]
            for c in (records[i : i + chunk] for i in range(0, len(records), chunk))
        )
        await self.writer.commit_in_turns(chunks)
        self.rows += len(records)
        if self.max_rows and self.rows > self.max_rows:
            self.overflow.set()

    def _close_db(self) -> None:
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:  # everything is committed in the WAL; the next start checkpoints it
            log.warning("final WAL checkpoint failed: %s", e)
        self.db.close()

    def write(self, ops: Write, *, deferred: bool = False) -> asyncio.Future:
        """Queue a write for the next group commit (coordd.writer); the future resolves once it is committed."""
        return self.writer.write(ops, deferred=deferred)

    def last_deferred(self, fut: asyncio.Future) -> bool:
        return self.writer.last_deferred(fut)

    def deleted(self, n: int) -> None:
        """Retention deleted n messages."""
        self.rows -= n
        self.pruned += n

    def _outcomes_recorded(self) -> None:
        if self.max_rows and self.rows > self.max_rows:
            self.overflow.set()  # messages just became finished, so prunable: the pruner looks again

    @property
    def commits(self) -> int:
        return self.writer.commits if hasattr(self, "writer") else 0  # 0 before open

    @property
    def commit_sizes(self) -> Histogram:
        return self.writer.commit_sizes

    # --- reads (coordd.reads) ---------------------------------------------------------

    def find_key(self, key: str) -> Record | None:
        return self.reads.find_key(key)

    def find_legacy_copy(self, key: str, agent: str) -> int | None:
        return self.reads.find_legacy_copy(key, agent)

    def load_queued(self) -> list[Record]:
        return self.reads.load_queued()

    def load_leased(self) -> list[tuple[Record, float]]:
        return self.reads.load_leased()

    def delivered_unacked(self) -> dict[str, int]:
        return self.reads.delivered_unacked()

    def load_paused(self) -> list[tuple[str, float, float | None]]:
        return self.reads.load_paused()

    def failed_chunk(self, agent: str, since: float, after: int, n: int) -> list[Record]:
        return self.reads.failed_chunk(agent, since, after, n)

    async def count_failed(self, agent: str, since: float) -> int:
        return await self.reads.count_failed(agent, since)

    def load_record(self, message_id: int) -> tuple[Record, str] | None:
        return self.reads.load_record(message_id)

    def find_origin(self, origin: str) -> int | None:
        return self.reads.find_origin(origin)

    def load_records(self, ids: list[int]) -> dict[int, Record]:
        return self.reads.load_records(ids)

    def origins(self, ids: list[int]) -> dict[int, str]:
        return self.reads.origins(ids)

    def receipts_owed(self) -> list[tuple]:
        return self.reads.receipts_owed()

    def load_cluster_agents(self) -> list[tuple[str, str, float]]:
        return self.reads.load_cluster_agents()

    async def get(self, message_id: int) -> p.Message | None:
        return await self.reads.get(message_id)

    def receipts(self, message_id: int) -> tuple[float | None, float | None] | None:
        return self.reads.receipts(message_id)

    def ack_states(self, ids: list[int]) -> dict[int, AckState]:
        return self.reads.ack_states(ids)

    async def inbox(self, agent: str, unread: bool, limit: int, max_bytes: int) -> list[p.MessageInfo]:
        return await self.reads.inbox(agent, unread, limit, max_bytes)

    async def history(self, q: p.History, max_bytes: int = 1 << 62) -> p.Page:
        return await self.reads.history(q, max_bytes)

    def reply_target(self, message_id: int) -> tuple[str, str | None, int, str | None] | None:
        return self.reads.reply_target(message_id)

    async def thread(self, message_id: int, limit: int, max_bytes: int) -> list[p.MessageInfo] | None:
        return await self.reads.thread(message_id, limit, max_bytes)

    async def counts(self) -> dict[tuple[str, str], int]:
        return await self.reads.counts()

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(self.path + suffix).st_size
            except FileNotFoundError:
                pass
        return total
