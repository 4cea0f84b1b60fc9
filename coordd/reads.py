"""Reads: the cheap indexed ones a request needs to decide its answer, on the loop thread; the scans through
aiosqlite on a second connection, so a large history page never stalls sends (WAL lets that reader see
committed rows while the writer writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import aiosqlite

from coordctl import protocol as p
from coordd import fts
from coordd import schema as s
from coordd.model import Record, Refused
from coordd.schema import (
    COLUMNS,
    FIND_ORIGIN,
    LEASED,
    LOAD_CLUSTER_AGENTS,
    ORIGINS,
    RECEIPTS_OWED,
    info_from_row,
    record_from_row,
)


class AckState(NamedTuple):
    """What `ack` needs to decide on a message, and to report its receipts."""

    agent: str  # its recipient
    sender: str | None
    priority: p.Priority
    read_at: float | None
    acked_at: float | None
    status: str  # as stored: only a delivered message can be acknowledged


HISTORY_BATCH = 64  # rows fetched per step of a history page (bodies are at most max_frame_bytes each)
M_COLUMNS = ", ".join(f"m.{c.strip()}" for c in COLUMNS.split(","))  # COLUMNS of `messages m`


def search_sql(where: Sequence[str], offset: int) -> str:
    """A search page's SQL: the newest fts.RANKED matches that pass the `where` conditions (on `messages m`),
    best first. Its parameters: the MATCH expression (fts.match_expression), those of `where`, the LIMIT.
    offset: an int, 0 to MAX_ID (check_ids)."""
    return (
        f"SELECT {M_COLUMNS} FROM (SELECT m.id AS id, {fts.RANK} AS score"
        " FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
        f" WHERE messages_fts MATCH ?{''.join(' AND ' + w for w in where)}"
        f" ORDER BY messages_fts.rowid DESC LIMIT {fts.RANKED}) f"
        f" JOIN messages m ON m.id = f.id ORDER BY f.score, m.id DESC LIMIT ? OFFSET {offset}"
    )


class Reads:
    def __init__(self, db: sqlite3.Connection, reader: aiosqlite.Connection) -> None:
        self.db = db  # the writer's connection: reads on the loop thread (cheap, indexed, needed to decide an answer)
        self.reader = reader  # aiosqlite, read-only: the scans
        self.scanning = asyncio.Lock()  # one statement at a time on the reader (_scan)
        # Ids below it may hold broadcast copies keyed "KEY:AGENT" (schema.MIGRATIONS[1]).
        self.legacy_keys_below = db.execute("SELECT below FROM legacy_keys").fetchone()[0]

    @contextlib.asynccontextmanager
    async def _scan(self, sql: str, args: Sequence[object] = ()) -> AsyncIterator[aiosqlite.Cursor]:
        """A statement on the reader, the only one until its cursor closes. A statement's read transaction
        lasts while its cursor is open (a page is fetched in steps, with turns of the loop between), and every
        other statement on that connection would read the same snapshot: one started after a commit would not
        see it (a message just sent missing from history, one just marked read fetched again)."""
        async with self.scanning, self.reader.execute(sql, args) as cur:
            yield cur

    def find_key(self, key: str) -> Record | None:
        """The message with this idempotency key, whole (a duplicate's content is compared: key_conflict)."""
        row = self.db.execute(f"SELECT {COLUMNS} FROM messages WHERE key = ?", (key,)).fetchone()
        return None if row is None else record_from_row(row)

    def find_legacy_copy(self, key: str, agent: str) -> int | None:
        """The id of `agent`'s copy of a broadcast keyed `key` that a coordd of schema 1 stored (see MIGRATIONS[1])."""
        if not self.legacy_keys_below:
            return None
        legacy = (f"{key}:{agent}", agent, self.legacy_keys_below)
        row = self.db.execute("SELECT id FROM messages WHERE key = ? AND agent = ? AND id < ?", legacy).fetchone()
        return row[0] if row else None

    def load_queued(self) -> list[Record]:
        cur = self.db.execute(
            f"SELECT {COLUMNS} FROM messages WHERE status = 'queued' AND forwarded IS NULL ORDER BY id"
        )
        return [record_from_row(r) for r in cur]

    def load_leased(self) -> list[tuple[Record, float]]:
        """Messages a pull agent fetched and has not acknowledged, with the end of their lease, in id order."""
        cur = self.db.execute(f"SELECT {COLUMNS} FROM messages WHERE {LEASED} ORDER BY id")
        return [(record_from_row(r), r[19]) for r in cur]

    def delivered_unacked(self) -> dict[str, int]:
        """How many delivered messages each agent has not acknowledged (once, at start: coordd.delivery counts on)."""
        rows = self.db.execute(
            "SELECT agent, count(*) FROM messages WHERE status = 'delivered' AND acked_at IS NULL GROUP BY agent"
        )
        return dict(rows.fetchall())

    def load_paused(self) -> list[tuple[str, float, float | None]]:
        return self.db.execute(s.LOAD_PAUSED).fetchall()

    def failed_chunk(self, agent: str, since: float, after: int, n: int) -> list[Record]:
        """The next n of agent's failed messages created since `since`, with ids above `after`, in id order."""
        return [record_from_row(r) for r in self.db.execute(s.FAILED_CHUNK, (agent, since, after, n))]

    async def count_failed(self, agent: str, since: float) -> int:
        """A scan (on the reader, off the loop): an agent may have 100,000 failed messages."""
        async with self._scan(s.COUNT_FAILED, (agent, since)) as cur:
            row = await cur.fetchone()
        return row[0] if row else 0

    def load_record(self, message_id: int) -> tuple[Record, str] | None:
        r = self.db.execute(f"SELECT {COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        return (record_from_row(r), r[8]) if r else None

    def load_records(self, ids: list[int]) -> dict[int, Record]:
        """These messages (those still stored), by id."""
        found: dict[int, Record] = {}
        for i in range(0, len(ids), 10_000):  # SQLite's bound on a statement's parameters is 32,766
            part = ids[i : i + 10_000]
            sql = f"SELECT {COLUMNS} FROM messages WHERE id IN ({','.join('?' * len(part))})"
            found.update((r[0], record_from_row(r)) for r in self.db.execute(sql, part))
        return found

    def find_origin(self, origin: str) -> int | None:
        """The id under which a message another node forwarded ("<node>:<id>") is stored here, if it is."""
        row = self.db.execute(FIND_ORIGIN, (origin,)).fetchone()
        return row[0] if row else None

    def origins(self, ids: list[int]) -> dict[int, str]:
        """Of these messages, those another node forwarded: id -> origin."""
        return dict(self.db.execute(ORIGINS.format(",".join("?" * len(ids))), ids).fetchall()) if ids else {}

    def load_cluster_agents(self) -> list[tuple[str, str, float]]:
        return self.db.execute(LOAD_CLUSTER_AGENTS).fetchall()

    def receipts_owed(self) -> list[tuple]:
        """The messages from other nodes whose receipts JetStream has not taken (coordd.cluster, at start)."""
        return self.db.execute(RECEIPTS_OWED).fetchall()

    def receipts(self, message_id: int) -> tuple[float | None, float | None] | None:
        """(read_at, acked_at) of a message; None: there is no such message."""
        return self.db.execute("SELECT read_at, acked_at FROM messages WHERE id = ?", (message_id,)).fetchone()

    def ack_states(self, ids: list[int]) -> dict[int, AckState]:
        """The AckState of each of the messages that exist, by id."""
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT id, agent, sender, priority, read_at, acked_at, status FROM messages WHERE id IN ({marks})", ids
        )
        return {r[0]: AckState(*r[1:]) for r in rows}

    async def inbox(self, agent: str, unread: bool, limit: int, max_bytes: int) -> list[p.MessageInfo]:
        """An agent's delivered messages, oldest first (unread: only those with no read_at), at most `limit`; it
        stops early once the bodies pass max_bytes (at least one)."""
        sql = f"SELECT {COLUMNS} FROM messages WHERE agent = ? AND status = 'delivered'"
        if unread:
            sql += " AND read_at IS NULL"  # the partial index messages_unread
        return await self._oldest_first(sql, agent, limit, max_bytes)

    def reply_target(self, message_id: int) -> tuple[str, str | None, int, str | None] | None:
        """(recipient, sender, thread, subject) of a message; None: there is no such message."""
        return self.db.execute(
            "SELECT agent, sender, thread, subject FROM messages WHERE id = ?", (message_id,)
        ).fetchone()

    async def thread(self, message_id: int, limit: int, max_bytes: int) -> list[p.MessageInfo] | None:
        """The messages of a message's thread in id order, as inbox pages them; None: there is no such message."""
        async with self._scan("SELECT thread FROM messages WHERE id = ?", (message_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return await self._oldest_first(f"SELECT {COLUMNS} FROM messages WHERE thread = ?", row[0], limit, max_bytes)

    async def _oldest_first(self, sql: str, key: object, limit: int, max_bytes: int) -> list[p.MessageInfo]:
        rows: list[Sequence[Any]] = []
        size = 0
        async with self._scan(sql + " ORDER BY id LIMIT ?", (key, limit)) as cur:
            while len(rows) < limit:
                batch = await cur.fetchmany(min(HISTORY_BATCH, limit - len(rows)))
                for r in batch:
                    size += len(r[7]) * 4 + 1024  # at most 4 bytes a character, and the fields around the body
                    if size > max_bytes and rows:
                        return [info_from_row(r) for r in rows]
                    rows.append(r)
                if not batch:
                    break
        return [info_from_row(r) for r in rows]

    async def get(self, message_id: int) -> p.Message | None:
        async with self._scan(f"SELECT {COLUMNS} FROM messages WHERE id = ?", (message_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        async with self._scan(
            "SELECT number, started, finished, ok, error FROM attempts WHERE message_id = ? ORDER BY number",
            (message_id,),
        ) as cur:
            attempts = [
                p.Attempt(number=a[0], started=a[1], finished=a[2], ok=bool(a[3]), error=a[4]) async for a in cur
            ]
        return p.Message(message=info_from_row(row), attempts=attempts)

    async def history(self, q: p.History, max_bytes: int = 1 << 62) -> p.Page:
        """A page of q.limit messages at most, newest first (with q.search: best match first); it stops early
        once the bodies pass max_bytes.

        Rows are fetched HISTORY_BATCH at a time, so a page of large bodies never holds
        more than about max_bytes plus one batch in memory.
        """
        where: list[str] = []
        args: list[object] = []
        for column, value in (("agent", q.agent), ("sender", q.sender), ("status", q.status)):
            if value is not None:
                where.append(f"m.{column} = ?")
                args.append(value)
        if q.since is not None:
            where.append("m.created >= ?")
            args.append(q.since)
        if q.until is not None:
            where.append("m.created < ?")
            args.append(q.until)
        if q.contains:
            where.append("instr(m.body, ?) > 0")
            args.append(q.contains)
        if q.search is not None:
            return await self._search(q, where, args, max_bytes)
        if q.cursor is not None:
            where.append("m.id < ?")
            args.append(q.cursor)
        sql = f"SELECT {M_COLUMNS} FROM messages m"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows, more = await self._page(sql + " ORDER BY m.id DESC LIMIT ?", args, q.limit, max_bytes)
        messages = [info_from_row(r) for r in rows]
        return p.Page(messages=messages, cursor=messages[-1].id if more and messages else None)

    async def _search(self, q: p.History, where: list[str], args: list[object], max_bytes: int) -> p.Page:
        """History's page of the matches of q.search, best first (fts.RANK, then newest first); the cursor is
        the number of matches the pages so far showed (an offset into the ranking)."""
        expression = fts.match_expression(q.search or "")
        if expression is None:
            raise Refused(
                "bad_request", f"search: {q.search!r} holds no word to look for: give words (letters or digits)"
            )
        offset = q.cursor or 0
        if offset < 0:
            raise Refused("bad_request", f"cursor: {offset} is not a search page's cursor: pass back page.cursor")
        try:
            rows, more = await self._page(search_sql(where, offset), [expression, *args], q.limit, max_bytes)
        except sqlite3.OperationalError as e:  # match_expression quotes every part: a bug, or a word FTS5 refuses
            if not str(e).startswith("fts5:"):
                raise
            raise Refused(
                "bad_request", f"search: {q.search!r}: {e}; search for plain words or a quoted phrase"
            ) from None
        messages = [info_from_row(r) for r in rows]
        return p.Page(messages=messages, cursor=offset + len(messages) if more and messages else None)

    async def _page(self, sql: str, args: list[object], limit: int, max_bytes: int) -> tuple[list[Sequence[Any]], bool]:
        """Up to `limit` rows of sql (which ends in LIMIT ?), fewer once their bodies pass max_bytes; and
        whether more are left."""
        rows: list[Sequence[Any]] = []
        size = 0
        async with self._scan(sql, [*args, limit + 1]) as cur:  # one extra row tells if more are left
            while len(rows) <= limit and size <= max_bytes:
                batch = await cur.fetchmany(min(HISTORY_BATCH, limit + 1 - len(rows)))
                if not batch:
                    break
                rows += batch
                size += sum(len(r[7]) for r in batch)
        return rows[:limit], len(rows) > limit or size > max_bytes

    async def counts(self) -> dict[tuple[str, str], int]:
        """Stored messages by (agent, status)."""
        async with self._scan("SELECT agent, status, count(*) FROM messages GROUP BY agent, status") as cur:
            return {(a, s): n async for a, s, n in cur}
