"""Bulk retry and cancel (`coordctl retry --agent A [--since T]`, `cancel --agent A ...`) and `resend ID`."""

from __future__ import annotations

import socket
import time

import msgspec
import pytest
from conftest import inbox_bodies, wait_until
from test_cli import cli, ok
from test_core import block_inbox, unblock_inbox

from coordctl import CoordError, protocol

FAIL_AT_ONCE = {"backoff_initial_ms": 20, "backoff_max_ms": 100, "unhealthy_recheck_ms": 50, "max_attempts": 1}
PULL = {"id": "P", "transport": "pull"}


def statuses(c, ids: list[int]) -> list[str]:
    return [c.get(i).message.status for i in ids]


def failed(c, ids: list[int]) -> bool:
    return statuses(c, ids) == ["failed"] * len(ids)


def test_retry_every_failed_message_of_an_agent_and_only_the_recent_ones_with_since(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], delivery=FAIL_AT_ONCE)
    block_inbox(d, "A")
    block_inbox(d, "B")
    with d.client() as c:
        old = [c.send("A", f"old {n}") for n in range(3)]
        others = [c.send("B", "B's")]
        wait_until(lambda: failed(c, old + others), what="the first failures")
        cut = time.time()
        new = [c.send("A", f"new {n}") for n in range(2)]
        wait_until(lambda: failed(c, new), what="the later failures")
        unblock_inbox(d, "A")
        assert ok(d, "retry", "--agent", "A", "--since", str(cut)).strip() == "2 messages queued again"
        wait_until(lambda: statuses(c, new) == ["delivered"] * 2, what="the recent ones delivered")
        assert statuses(c, old + others) == ["failed"] * 4  # older, or another agent's: untouched
        assert c.retry_many("A", dry_run=True) == 3
        assert failed(c, old)  # a dry run changes nothing
        assert ok(d, "retry", "--agent", "A", "--status", "failed").strip() == "3 messages queued again"
        wait_until(lambda: statuses(c, old) == ["delivered"] * 3, what="the older ones delivered")
        assert ok(d, "retry", "--agent", "A").strip() == "0 messages queued again"
        assert statuses(c, others) == ["failed"]
        with pytest.raises(CoordError) as e:
            c.call(protocol.RetryMany(agent="A", status="delivered"))
        assert e.value.code == "bad_request" and "only failed" in e.value.message
    assert inbox_bodies(d.inbox("A")) == ["old 0", "old 1", "old 2", "new 0", "new 1"]  # (by id)
    assert cli(d, "retry", "--agent", "A", "--status", "delivered").returncode == 2  # click's choice
    out = cli(d, "retry", str(others[0]), "--agent", "B")
    assert out.returncode == 2 and "not both" in out.stderr
    out = cli(d, "retry")
    assert out.returncode == 2 and "--agent" in out.stderr
    assert ok(d, "retry", str(others[0])).strip() == f"{others[0]} queued"  # one id still works


def test_more_than_100_need_yes_without_a_terminal(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], delivery=FAIL_AT_ONCE)
    block_inbox(d, "A")
    with d.client() as c:
        ids = c.batch([{"to": "A", "body": f"m{n}"} for n in range(150)])
        wait_until(lambda: c.history(agent="A", status="failed", limit=1000).messages.__len__() == 150, what="150 fail")
    out = cli(d, "retry", "--agent", "A")
    assert out.returncode == 2 and "retry 150 failed messages of A" in out.stderr and "--yes" in out.stderr
    with d.client() as c:
        assert c.retry_many("A", dry_run=True) == 150  # nothing was retried
        c.pause("A")  # so that they stay queued, to cancel
    unblock_inbox(d, "A")
    assert ok(d, "retry", "--agent", "A", "--yes").strip() == "150 messages queued again"
    out = cli(d, "cancel", "--agent", "A")
    assert out.returncode == 2 and "cancel 150 queued messages of A" in out.stderr
    assert ok(d, "--json", "cancel", "--agent", "A", "-y").strip() == '{"count":150}'
    with d.client() as c:
        assert statuses(c, ids) == ["cancelled"] * 150
        assert next(a for a in c.status().agents if a.id == "A").queued == 0
        c.resume("A")
    assert inbox_bodies(d.inbox("A")) == []


def test_cancel_leaves_messages_being_delivered_alone(make_daemon):
    """A pull agent's fetched (leased) message is being delivered: a bulk cancel takes only the queued ones."""
    d = make_daemon(agents=[PULL, {"id": "A"}])
    with d.client() as c:
        fetched = c.send("P", "fetched")
        assert [m.id for m in c.inbox("P", limit=1)] == [fetched]
        c.pause("A")
        early = c.send("A", "early")
        cut = time.time()
        queued = [c.send("P", "queued 1"), c.send("P", "queued 2"), c.send("A", "late")]
        assert c.cancel_many("P", dry_run=True) == 2
        assert ok(d, "cancel", "--agent", "P").strip() == "2 messages cancelled"
        assert ok(d, "cancel", "--agent", "A", "--since", str(cut)).strip() == "1 message cancelled"
        assert statuses(c, queued) == ["cancelled"] * 3
        assert statuses(c, [fetched, early]) == ["delivered", "queued"]
        assert c.inbox("P") == []  # nothing left to fetch
        c.ack("P", [fetched])
        c.resume("A")
        wait_until(lambda: c.get(early).message.status == "delivered", what="the early message, not cancelled")
        with pytest.raises(CoordError) as e:
            c.cancel_many("Nobody")
        assert e.value.code == "unknown_agent"
    assert inbox_bodies(d.inbox("A")) == ["early"]


def test_resend_queues_a_new_copy_that_survives_a_restart(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    with d.client() as c:
        first = c.send("A", "do it again", sender="B", kind="task", tags=["x"], subject="again", key="once", wait=True)
        copy = int(ok(d, "resend", str(first)))
        assert copy > first
        wait_until(lambda: c.get(copy).message.status == "delivered", what="the copy delivered")
        m = c.get(copy).message
        assert (m.resent_from, m.to, m.body, m.sender, m.kind, m.tags, m.subject, m.key) == (
            first,
            "A",
            "do it again",
            "B",
            "task",
            ["x"],
            "again",
            None,  # no key: a key would name the first
        )
        assert c.get(first).message.resent_from is None
        with pytest.raises(CoordError) as e:
            c.resend(10**9)
        assert e.value.code == "unknown_message"
    assert f"resent from: #{first}" in ok(d, "show", str(copy))
    assert inbox_bodies(d.inbox("A")) == ["do it again", "do it again"]
    d.stop()
    d.start()
    with d.client() as c:
        assert c.get(copy).message.resent_from == first


def test_old_clients_see_no_new_field_unless_it_is_set(make_daemon):
    """The new fields are additive and omitted at their defaults: a client of the earlier protocol decodes them
    all (its structs lack them; msgspec skips unknown fields), and sees none on an agent that is not paused."""
    d = make_daemon(agents=[{"id": "A"}])
    with d.client() as c:
        sent = c.send("A", "plain", wait=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(d.socket)
        for req in ({"op": "status", "rid": 1}, {"op": "get", "rid": 2, "message_id": sent}):
            body = msgspec.msgpack.encode(req)
            s.sendall(len(body).to_bytes(4, "big") + body)
            size = int.from_bytes(s.recv(4, socket.MSG_WAITALL), "big")
            reply = msgspec.msgpack.decode(s.recv(size, socket.MSG_WAITALL))
            item = reply["agents"][0] if req["op"] == "status" else reply["message"]
            assert not {"paused", "paused_since", "paused_until", "resent_from"} & set(item), item


def test_a_bulk_retry_survives_a_restart(make_daemon):
    """Retried in bulk while the agent is paused, the messages are queued in the database: a SIGKILL loses
    none, and once resumed after the restart they go out in order, once each."""
    d = make_daemon(agents=[{"id": "A"}], delivery=FAIL_AT_ONCE)
    block_inbox(d, "A")
    with d.client() as c:
        ids = [c.send("A", f"m{n}") for n in range(5)]
        wait_until(lambda: failed(c, ids), what="the failures")
    unblock_inbox(d, "A")
    ok(d, "pause", "A")
    assert ok(d, "retry", "--agent", "A").strip() == "5 messages queued again"
    d.kill()
    d.start()
    with d.client() as c:
        assert statuses(c, ids) == ["queued"] * 5 and c.status().agents[0].paused
        ok(d, "resume", "A")
        wait_until(lambda: statuses(c, ids) == ["delivered"] * 5, what="the retried ones after the restart")
    assert inbox_bodies(d.inbox("A")) == [f"m{n}" for n in range(5)]
