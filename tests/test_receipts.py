"""Receipts (delivered, read, acked), the inbox and ack requests, and `send` waiting for read or acked."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import wait_until
from test_cli import cli, ok

from coordctl import AsyncClient, CoordError
from coordd import schema

DOWN = {"id": "Down", "transport": "tmux", "target": "nowhere:0.0"}  # never delivered: keeps its messages queued


def delivered(c, message_id: int) -> bool:
    return c.get(message_id).message.status == "delivered"


def test_receipts_are_set_when_delivered_read_and_acked(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, DOWN])
    with d.client() as c:
        queued = c.send("Down", "never delivered")
        m = c.send("A", "hello", sender="B")
        first = c.get(m).message
        assert first.read_at is None and first.acked_at is None
        wait_until(lambda: delivered(c, m), what="delivery")
        info = c.get(m).message
        assert info.delivered is not None and info.read_at is None and info.acked_at is None

        got = c.inbox("A")
        assert [x.id for x in got] == [m] and got[0].read_at is not None and got[0].acked_at is None
        stored = c.get(m).message
        assert stored.read_at == got[0].read_at >= info.delivered
        assert c.inbox("A") == []  # read: no longer unread
        assert [x.id for x in c.inbox("A", unread=False)] == [m]  # --all still lists it, read_at unchanged
        assert c.get(m).message.read_at == stored.read_at

        assert c.ack("A", [m]) == 1
        acked = c.get(m).message
        assert acked.acked_at is not None and acked.acked_at >= acked.read_at
        assert c.ack("A", [m, m]) == 0  # acked before: nothing changes
        assert c.get(m).message.acked_at == acked.acked_at
        page = c.history(agent="A").messages
        assert page[0].read_at == acked.read_at and page[0].acked_at == acked.acked_at

        assert c.inbox("Down", unread=False) == []  # a queued message is not in the inbox
        q = c.get(queued).message
        assert q.delivered is None and q.read_at is None and q.acked_at is None


def test_inbox_is_oldest_first_limited_and_can_ack(make_daemon):
    d = make_daemon(agents=[{"id": "A"}])
    with d.client() as c:
        ids = [c.send("A", f"m{i}") for i in range(5)]
        wait_until(lambda: delivered(c, ids[-1]), what="delivery")
        assert [x.id for x in c.inbox("A", limit=2)] == ids[:2]
        got = c.inbox("A", ack=True)
        assert [x.id for x in got] == ids[2:] and all(x.acked_at for x in got)
        assert c.get(ids[3]).message.acked_at is not None and c.get(ids[0]).message.acked_at is None


def test_inbox_requests_at_once_never_return_the_same_message(make_daemon):
    d = make_daemon(agents=[{"id": "A"}])
    with d.client() as c:
        ids = c.batch([{"to": "A", "body": f"m{i}"} for i in range(10)])
        wait_until(lambda: delivered(c, ids[-1]), what="delivery")

    async def fetch_at_once() -> list[list[int]]:
        async with AsyncClient(d.socket) as ac:  # pipelined: the daemon handles the ten at once
            pages = await asyncio.gather(*(ac.inbox("A", limit=1) for _ in range(10)))
        return [[m.id for m in page] for page in pages]

    assert sorted(i for page in asyncio.run(fetch_at_once()) for i in page) == ids


def test_inbox_long_poll_answers_when_a_message_arrives(make_daemon):
    d = make_daemon(agents=[{"id": "A"}])
    with d.client() as c, d.client() as sender, ThreadPoolExecutor(1) as pool:
        start = time.monotonic()
        assert c.inbox("A", wait=0.3) == []  # nothing comes: empty, once the wait is up
        assert time.monotonic() - start >= 0.3
        polling = pool.submit(c.inbox, "A", wait=30)
        assert not polling.done()
        m = sender.send("A", "wake up")
        got = polling.result(timeout=10)  # well before its 30 s
        assert [x.id for x in got] == [m] and got[0].read_at is not None


def test_ack_of_another_agents_message_is_refused(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    with d.client() as c:
        mine, theirs = c.send("A", "for A"), c.send("B", "for B")
        wait_until(lambda: delivered(c, mine) and delivered(c, theirs), what="delivery")  # (else: bad_state)
        with pytest.raises(CoordError) as e:
            c.ack("A", [mine, theirs])
        assert e.value.code == "not_recipient" and f"message {theirs}" in e.value.message
        assert c.get(mine).message.acked_at is None  # all or nothing
        with pytest.raises(CoordError) as e:
            c.ack("A", [10**9])
        assert e.value.code == "unknown_message"
        with pytest.raises(CoordError) as e:
            c.ack("Nobody", [mine])
        assert e.value.code == "unknown_agent"
        assert c.ack("A", [mine]) == 1


@pytest.mark.parametrize("point", ["read", "acked"])
def test_send_waits_for_read_or_acked(make_daemon, point):
    d = make_daemon(agents=[{"id": "A"}])
    with d.client() as c, d.client() as recipient, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(c.send, "A", "please read", wait=True, wait_for=point, timeout=30)
        wait_until(lambda: recipient.history(agent="A").messages, what="the message to be stored")
        m = recipient.history(agent="A").messages[0].id
        wait_until(lambda: delivered(recipient, m), what="delivery")
        assert not waiting.done()  # delivered is not enough
        assert [x.id for x in recipient.inbox("A")] == [m]
        if point == "acked":
            assert not waiting.done()  # read is not enough either
            recipient.ack("A", [m])
        assert waiting.result(timeout=10) == m
        info = recipient.get(m).message
        assert info.read_at is not None and (point == "read" or info.acked_at is not None)


def test_send_wait_for_times_out_saying_which_point(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, DOWN])
    with d.client() as c:
        with pytest.raises(CoordError) as e:
            c.send("A", "nobody reads", wait=True, wait_for="acked", timeout=0.3)
        assert e.value.code == "timeout" and "delivered but not acked" in e.value.message
        with pytest.raises(CoordError) as e:
            c.send("Down", "never delivered", wait=True, wait_for="read", timeout=0.3)
        assert e.value.code == "not_delivered" and "not delivered" in e.value.message
        with pytest.raises(CoordError) as e:
            c.send("A", "x", wait_for="read")
        assert e.value.code == "bad_request" and "needs wait" in e.value.message
        assert c.send("A", "default", wait=True) > 0  # wait_for defaults to delivered


def test_a_store_of_the_previous_schema_keeps_every_message(make_daemon):
    d = make_daemon(start=False)
    d.tmp.joinpath("state").mkdir(exist_ok=True)
    db = sqlite3.connect(d.db)
    db.executescript(schema.MIGRATIONS[0] + schema.MIGRATIONS[1] + "PRAGMA user_version = 2;")
    db.executemany(
        "INSERT INTO messages (id, agent, priority, body, status, created, delivered)"
        " VALUES (?, 'Agent-1', 'regular', ?, ?, 1, ?)",
        [(1, "old delivered", "delivered", 2.0), (2, "old failed", "failed", None), (3, "old queued", "queued", None)],
    )
    db.commit()
    db.close()
    d.start()
    with d.client() as c:
        page = c.history(limit=10).messages
        assert [(x.id, x.body) for x in page] == [(3, "old queued"), (2, "old failed"), (1, "old delivered")]
        old = c.get(1).message
        assert old.delivered == 2.0 and old.read_at is None and old.acked_at is None
        wait_until(lambda: delivered(c, 3), what="the old queued message to be delivered")
        assert [x.id for x in c.inbox("Agent-1")] == [1, 3]
        assert c.ack("Agent-1", [1, 3]) == 2
    d.stop()
    assert sqlite3.connect(d.db).execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION


def test_cli_inbox_ack_and_wait_for(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    m = int(ok(d, "send", "A", "line one\n\x1b[31mred\x1b[0m", "--sender", "B").strip())
    with d.client() as c:
        wait_until(lambda: delivered(c, m), what="delivery")
    shown = ok(d, "inbox", "A")
    assert f"--- #{m}" in shown and "from B" in shown and "line one" in shown
    assert "\x1b" not in shown  # a body's escape sequence cannot drive the terminal
    assert ok(d, "inbox", "A").strip() == ""  # read now
    as_json = json.loads(ok(d, "--json", "inbox", "A", "--all", "--ack"))
    assert [x["id"] for x in as_json] == [m] and as_json[0]["acked_at"] and as_json[0]["read_at"]
    assert json.loads(ok(d, "--json", "ack", "A", str(m))) == {"changed": 0}
    other = int(ok(d, "send", "B", "for B").strip())
    refused = cli(d, "ack", "A", str(other))
    assert refused.returncode != 0 and "not_recipient" in refused.stderr
    assert "read:" in ok(d, "show", str(m)) and "acked:" in ok(d, "show", str(m))
    out = cli(d, "send", "A", "wait for me", "--wait-for", "acked", "--timeout", "0.3")
    assert out.returncode != 0 and "timeout" in out.stderr and "not acked" in out.stderr
    assert ok(d, "inbox", "B", "--wait", "5", "--ack").startswith(f"--- #{other}")


def test_a_read_is_seen_by_the_next_request_while_long_scans_run(make_daemon):
    """Every read sees every commit before it: a history page being scanned (its cursor open between batches)
    must not hold the scans that come after it to an older snapshot, where a message just marked read is
    unread still (fetched twice) or one just sent is missing."""
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    with d.client() as c:
        for _ in range(3):
            c.batch([{"to": "B", "body": f"filler {i} " + "z" * 300} for i in range(1000)])
    stop = False

    def scan() -> int:
        pages = 0
        with d.client() as scanner:
            while not stop:
                scanner.history(agent="B", limit=1000)
                pages += 1
        return pages

    with ThreadPoolExecutor(2) as pool, d.client() as c:
        scanners = [pool.submit(scan) for _ in range(2)]
        try:
            for i in range(60):
                sent = c.send("A", f"m{i}", wait=True, timeout=10)
                assert c.history(agent="A", limit=1).messages[0].id == sent  # what was just committed
                assert [m.id for m in c.inbox("A")] == [sent]
                assert c.inbox("A") == []  # it is read now: no second fetch returns it
        finally:
            stop = True
        assert all(s.result() > 0 for s in scanners)
