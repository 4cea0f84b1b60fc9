"""The database's schema: its tables, their migrations, the SQL every part of the store runs, rows as objects.

A new schema version is a new entry at the end of MIGRATIONS (append, never edit);
`migrate` brings an older file up to date at open.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from coordctl import protocol as p
from coordd.model import Record, StorageError

log = logging.getLogger("coordd.store")

SCHEMA_VERSION = 8

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
    # 2: a broadcast's copies get keys no send's key can equal (coordctl.protocol.broadcast_key). Schema 1
    # stored them as "KEY:AGENT", the same as a send keyed "KEY:AGENT": those keys stay as they are, since
    # nothing tells the two apart, and `below` is the first id after them, so that a broadcast retried
    # across the upgrade still finds the copies stored before it (Reads.find_legacy_copy). 0: none.
    """
    CREATE TABLE legacy_keys (below INTEGER NOT NULL);
    INSERT INTO legacy_keys SELECT coalesce(max(id) + 1, 0) FROM messages WHERE key IS NOT NULL;
    """,
    # 3: receipts. `delivered` (schema 1) is when it was delivered; read_at when its recipient fetched it through
    # the inbox request, acked_at when the recipient acknowledged it (NULL until then). The index keeps an
    # agent's unread inbox a short scan however many messages it has read.
    """
    ALTER TABLE messages ADD COLUMN read_at REAL;
    ALTER TABLE messages ADD COLUMN acked_at REAL;
    CREATE INDEX messages_unread ON messages(agent, id) WHERE read_at IS NULL;
    """,
    # 4: replies and threads. reply_to is the message a message answers; thread the id of its thread's first
    # message (a message that answers none starts its own: thread = id, as every message stored before).
    """
    ALTER TABLE messages ADD COLUMN reply_to INTEGER;
    ALTER TABLE messages ADD COLUMN thread INTEGER;
    ALTER TABLE messages ADD COLUMN subject TEXT;
    UPDATE messages SET thread = id;
    CREATE INDEX messages_thread ON messages(thread, id);
    """,
    # 5: pull agents and group sends. fetches counts the times a pull agent fetched the message, lease_until is
    # when its current lease ends (a fetched message not acked by then is fetched again); grp the group it
    # was sent to ("@NAME": its recipient is the member the group's pick chose), NULL when sent to the agent.
    """
    ALTER TABLE messages ADD COLUMN fetches INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN lease_until REAL;
    ALTER TABLE messages ADD COLUMN grp TEXT;
    """,
    # 6: full-text search over subject and body (coordd.fts). External content: the index keeps the words, the
    # text stays in `messages` alone. Such an index is kept in step by hand, and an entry is removed by
    # repeating exactly the text it indexed (subject and body never change once stored): the writer indexes
    # new rows (INDEX_NEW, see Store.insert), retention removes rows' entries just before the rows (UNINDEX).
    # 'rebuild' indexes the rows already there.
    """
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        subject, body, content = 'messages', content_rowid = 'id', tokenize = 'unicode61 remove_diacritics 2'
    );
    INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
    """,
    # 7: pause and resend. `paused` holds the agents whose deliveries are held (coordctl pause): since when, and
    # until when (NULL: until resumed); a row whose `until` has passed is a pause that ended. resent_from is the
    # message a message is a copy of (coordctl resend), NULL for any other.
    """
    CREATE TABLE paused (agent TEXT PRIMARY KEY, since REAL NOT NULL, until REAL);
    ALTER TABLE messages ADD COLUMN resent_from INTEGER;
    """,
    # 8: a cluster of nodes (coordd.cluster). origin is "<node>:<id>", the node and id a message forwarded here
    # had there (NULL for a message sent here): unique, so that JetStream redelivering it never stores it twice.
    # receipted: which of its receipts JetStream has taken for the origin (RECEIPT_BITS): those not, a restart
    # publishes again. forwarded is when JetStream acknowledged a message this node forwarded to another node's
    # agent: from then on that node delivers it, and its receipts set the status here. cluster_agents is the last
    # directory this node saw (agent -> node): a restart while NATS is away still knows where to forward.
    """
    CREATE TABLE cluster_agents (agent TEXT PRIMARY KEY, node TEXT NOT NULL, updated REAL NOT NULL);
    ALTER TABLE messages ADD COLUMN origin TEXT;
    ALTER TABLE messages ADD COLUMN receipted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN forwarded REAL;
    CREATE UNIQUE INDEX messages_origin ON messages(origin) WHERE origin IS NOT NULL;
    """,
]

# The columns a message may leave empty are bound as '' (text) or 0 (ids) and stored as NULL: Python's sqlite3
# binds None through a failing adapter lookup, a quarter of the statement's cost (docs/architecture.md). None of
# them is ever '' or 0 otherwise (validation refuses empty names; ids start at 1). The rows: model.rows.
INSERT_MESSAGE = (
    "INSERT INTO messages (id, agent, sender, priority, kind, tags, key, body, status, created, reply_to, thread,"
    " subject, grp, resent_from) VALUES (?, ?, NULLIF(?, ''), ?, NULLIF(?, ''), NULLIF(?, ''), NULLIF(?, ''), ?,"
    " 'queued', ?, NULLIF(?, 0), ?, NULLIF(?, ''), NULLIF(?, ''), NULLIF(?, 0))"
)
# Index for search the rows with ids from ?1 to ?2 that are not indexed yet (the docsize table holds a row per
# indexed message), in one statement: FTS5 writes out each statement's words as a segment of its own.
INDEX_NEW = (
    "INSERT INTO messages_fts (rowid, subject, body) SELECT id, subject, body FROM messages"
    " WHERE id BETWEEN ?1 AND ?2 AND id NOT IN (SELECT id FROM messages_fts_docsize WHERE id BETWEEN ?1 AND ?2)"
)
# At open: index what a crash left unindexed (its deferred index write was lost), or 'rebuild' if ever needed.
INDEXED = "SELECT count(*) FROM messages_fts_docsize"
INDEX_MISSING = (
    "INSERT INTO messages_fts (rowid, subject, body) SELECT id, subject, body FROM messages"
    " WHERE id NOT IN (SELECT id FROM messages_fts_docsize)"
)
REBUILD_INDEX = "INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')"
# Before deleting messages: remove their index entries (placeholder: the list of ids). Only indexed ones: removing
# an entry that is not there would corrupt the index's counts.
UNINDEX = (
    "INSERT INTO messages_fts (messages_fts, rowid, subject, body) SELECT 'delete', id, subject, body FROM messages"
    " WHERE id IN ({0}) AND id IN (SELECT id FROM messages_fts_docsize WHERE id IN ({0}))"
)
INSERT_ATTEMPT = "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?)"
# (lease_until = NULL: a message a pull agent had fetched and whose lease ran out, pushed after a reload made its
# agent a pushed one, is not leased any more.)
MARK_DELIVERED = (
    "UPDATE messages SET status = 'delivered', delivered = ?, attempts = ?, error = NULL, lease_until = NULL"
    " WHERE id = ?"
)
# A message forwarded to another node (coordd.cluster): JetStream has it; it stays queued until that node's receipt.
MARK_FORWARDED = "UPDATE messages SET forwarded = ?, attempts = ? WHERE id = ?"
MARK_FAILED = "UPDATE messages SET status = 'failed', attempts = ?, error = ? WHERE id = ?"
MARK_ATTEMPTED = "UPDATE messages SET attempts = ?, error = ? WHERE id = ?"
MARK_CANCELLED = "UPDATE messages SET status = 'cancelled' WHERE id = ? AND status = 'queued'"
# A retry (coordd.retry_cancel): on the sender of a message forwarded to another node, forwarded again (a restart
# publishes it again until JetStream has it); on the node a message was forwarded to, its outcome is owed again.
REQUEUE = "UPDATE messages SET status = 'queued', error = NULL, forwarded = NULL, receipted = receipted & ~1"
MARK_REQUEUED = f"{REQUEUE} WHERE id = ?"
MARK_READ = "UPDATE messages SET read_at = ? WHERE id = ? AND read_at IS NULL"
# Acknowledging implies having read: a message acked unread gets read_at too.
MARK_ACKED = "UPDATE messages SET acked_at = ?1, read_at = coalesce(read_at, ?1) WHERE id = ?2 AND acked_at IS NULL"
# A pull agent's fetch delivers and reads the message and leases it until lease_until (NULL with ack, which
# acknowledges it at once: acked_at is then set, else NULL). Each fetch counts as an attempt.
MARK_FETCHED = (
    "UPDATE messages SET status = 'delivered', delivered = ?1, attempts = ?2, error = NULL,"
    " read_at = coalesce(read_at, ?1), fetches = ?3, lease_until = ?4, acked_at = coalesce(acked_at, ?5) WHERE id = ?6"
)
# Fetched by a pull agent and not acknowledged: after a restart, leased again until their lease_until.
LEASED = "status = 'delivered' AND acked_at IS NULL AND lease_until IS NOT NULL"

# The cluster (coordd.cluster.forwarding): a message another node forwarded, stored under its origin; the receipts
# that node's messages get here (only a message still queued takes an outcome: a receipt may come twice).
SET_ORIGIN = "UPDATE messages SET origin = ? WHERE id = ?"
FIND_ORIGIN = "SELECT id FROM messages WHERE origin = ?"
ORIGINS = "SELECT id, origin FROM messages WHERE origin IS NOT NULL AND id IN ({})"
# The directory as this node last saw it (coordd.cluster.directory).
SAVE_CLUSTER_AGENT = "INSERT OR REPLACE INTO cluster_agents (agent, node, updated) VALUES (?, ?, ?)"
FORGET_CLUSTER_AGENT = "DELETE FROM cluster_agents WHERE agent = ?"
LOAD_CLUSTER_AGENTS = "SELECT agent, node, updated FROM cluster_agents"
# A receipt JetStream took (a bit of RECEIPT_BITS), and at start those a message from another node still owes it.
RECEIPT_BITS = {"delivered": 1, "failed": 1, "read": 2, "acked": 4}
MARK_RECEIPTED = "UPDATE messages SET receipted = receipted | ? WHERE origin = ?"
RECEIPTS_OWED = (
    "SELECT origin, status, delivered, error, read_at, acked_at, receipted FROM messages WHERE origin IS NOT NULL"
    " AND ((status IN ('delivered', 'failed', 'cancelled') AND receipted & 1 = 0)"
    " OR (read_at IS NOT NULL AND receipted & 2 = 0) OR (acked_at IS NOT NULL AND receipted & 4 = 0)) ORDER BY id"
)
REMOTE_DELIVERED = (
    "UPDATE messages SET status = 'delivered', delivered = ?, error = NULL WHERE id = ? AND status = 'queued'"
)
REMOTE_FAILED = "UPDATE messages SET status = 'failed', error = ? WHERE id = ? AND status = 'queued'"

TERMINAL = "('delivered', 'failed', 'cancelled')"
COLUMNS = (
    "id, agent, sender, priority, kind, tags, key, body, status, created, delivered, attempts, error, read_at,"
    " acked_at, reply_to, thread, subject, fetches, lease_until, grp, resent_from, origin, forwarded"
)
# Pauses (coordctl pause, resume): one row an agent; those loaded at start (an ended one is dropped then).
PAUSE = "INSERT OR REPLACE INTO paused (agent, since, until) VALUES (?, ?, ?)"
UNPAUSE = "DELETE FROM paused WHERE agent = ?"
PAUSE_ENDED = "DELETE FROM paused WHERE agent = ? AND until = ?"
LOAD_PAUSED = "SELECT agent, since, until FROM paused"
# Bulk retry (coordctl retry --agent): the next chunk of an agent's failed messages created since ?2, after id ?3.
FAILED_CHUNK = (
    f"SELECT {COLUMNS} FROM messages WHERE agent = ?1 AND status = 'failed' AND created >= ?2 AND id > ?3"
    " ORDER BY id LIMIT ?4"
)
MARK_REQUEUED_FAILED = f"{REQUEUE} WHERE id = ? AND status = 'failed'"
COUNT_FAILED = "SELECT count(*) FROM messages WHERE agent = ? AND status = 'failed' AND created >= ?"

# A write is a list of (sql, params, many): one statement, or executemany when many.
Write = list[tuple[str, Any, bool]]


_tags_decoder = msgspec.json.Decoder(list[str])


def info_from_row(r: Sequence[Any]) -> p.MessageInfo:  # r: a tuple or an sqlite3.Row
    return p.MessageInfo(
        id=r[0],
        to=r[1],
        sender=r[2],
        priority=r[3],
        kind=r[4] or p.DEFAULT_KIND,  # stored as NULL when the sender gave none
        tags=_tags_decoder.decode(r[5]) if r[5] else [],
        key=r[6],
        body=r[7],
        status=r[8],
        created=r[9],
        delivered=r[10],
        attempts=r[11],
        error=r[12],
        read_at=r[13],
        acked_at=r[14],
        reply_to=r[15],
        thread=r[16],
        subject=r[17],
        fetches=r[18],
        lease_until=r[19],
        group=r[20],
        resent_from=r[21],
        origin=r[22],
        forwarded=r[23],
    )


def record_from_row(r: Sequence[Any]) -> Record:
    return Record(
        id=r[0],
        agent=r[1],
        sender=r[2],
        priority=r[3],
        kind=r[4],
        tags=_tags_decoder.decode(r[5]) if r[5] else None,
        key=r[6],
        body=r[7],
        created=r[9],
        attempts=r[11],
        error=r[12],
        reply_to=r[15],
        thread=r[16],
        subject=r[17],
        group=r[20],
        read_at=r[13],
        fetches=r[18],
        resent_from=r[21],
        origin=r[22],
    )


def check_integrity(db: sqlite3.Connection, path: str) -> None:
    problems = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise StorageError(
            f"database {path} is corrupt ({'; '.join(problems)}). coordd never replaces it: "
            "move it aside (keep it for recovery, e.g. sqlite3 .recover) or set store.path "
            "to another file"
        )


def migrate(db: sqlite3.Connection, path: str) -> None:
    version = schema_version(db, path)
    for i in range(version, SCHEMA_VERSION):
        db.execute("BEGIN")
        for stmt in MIGRATIONS[i].split(";"):
            if stmt.strip():
                db.execute(stmt)
        db.execute(f"PRAGMA user_version = {i + 1}")
        db.execute("COMMIT")
        if version:  # (a new database is made in the same steps, worth one line, not one a step)
            log.info("migrated %s to schema version %d", path, i + 1)
    if not version:
        log.info("created %s (schema version %d)", path, SCHEMA_VERSION)


def schema_version(db: sqlite3.Connection, path: str) -> int:
    """The file's coordd schema version (0: a new, empty database); an error for anything else."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{path} has schema version {version}, newer than this coordd ({SCHEMA_VERSION}): upgrade coordd"
        )
    if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise StorageError(f"{path} is an SQLite database but not a coordd one: choose another store.path")
    return version
