"""Bounces: a sending agent hears that its message failed or was cancelled; the send reply says whether the
recipient is reachable now.

The faults are real: a regular file where an inbox directory should be (every attempt fails), a tmux
agent with no tmux at all, a pane running a shell (the agent is down).
"""

from __future__ import annotations

import sqlite3
import sys

import msgspec
import pytest
from conftest import cancel_between_attempts, read_inbox_file, wait_until
from test_cli import cli
from test_metrics import block_inbox, samples, value
from test_transport_faults import tmux  # noqa: F401 (a fixture)
from test_watch import Collector

from coordctl import Client, CoordError
from coordctl import protocol as p

AGENTS = [{"id": "A"}, {"id": "B"}]
FAST = {"backoff_initial_ms": 20, "backoff_max_ms": 40, "unhealthy_recheck_ms": 50}
TWO_TRIES = {**FAST, "max_attempts": 2}
MANY_TRIES = {**FAST, "max_attempts": 10_000}


def status(c: Client, message_id: int) -> str:
    return c.get(message_id).message.status


def bounces(c: Client) -> list[p.MessageInfo]:
    """Every bounce stored, oldest first."""
    return [m for m in reversed(c.history(limit=1000).messages) if m.kind == "bounce"]


def inbox_files(d, agent: str) -> list[tuple[dict, str]]:
    return [read_inbox_file(f) for f in sorted(d.inbox(agent).glob("*.md"))] if d.inbox(agent).is_dir() else []


def test_a_failed_message_bounces_to_its_sending_agent_once(make_daemon):
    d = make_daemon(agents=AGENTS, delivery=TWO_TRIES, start=False)
    block_inbox(d, "B")
    d.start()
    body = "please review #41 " + "x" * 100 + "\nsecond line"
    watch = Collector(d.socket, agents=["A"])
    with d.client() as c:
        lost = c.send("B", body, sender="A", subject="review")
        wait_until(lambda: status(c, lost) == "failed", what="the message to fail")
        # The bounce is stored with the failure: once the failure shows, so does the bounce.
        [bounce] = bounces(c)
        wait_until(lambda: status(c, bounce.id) == "delivered", what="the bounce to reach A")
        wait_until(lambda: any(e.event == "delivered" for e in watch.events()), what="the watcher to see it")
        watch.stop()
        assert (bounce.to, bounce.sender, bounce.reply_to, bounce.thread) == ("A", None, lost, lost)
        assert bounce.subject == f"not delivered: #{lost} to B"
        assert [m.id for m in c.thread(lost)] == [lost, bounce.id]
        error = c.get(lost).message.error
        found = samples(c.metrics())
    assert "exists but is not a directory" in error
    lines = bounce.body.split("\n")
    assert lines[0] == f"Your message #{lost} to B was not delivered."
    assert lines[1] == f'Message: "{body[:80]}…"'  # its first line, cut
    assert lines[2] == f"Why: it failed after 2 attempts: {error}"
    assert f"`coordctl retry {lost}`" in lines[3]
    # Watched like any message to A: accepted (from no sender), then delivered.
    events = watch.events()
    assert [(e.event, e.id) for e in events] == [(k, bounce.id) for k in ("accepted", "delivering", "delivered")]
    assert events[0].sender is None and events[0].preview == f"Your message #{lost} to B was not delivered."
    # Through A's own transport, the inbox file says who it is from and what it answers.
    [(fields, text)] = inbox_files(d, "A")
    assert (fields["from"], fields["kind"], fields["reply_to"], fields["thread"]) == ("coordd", "bounce", lost, lost)
    assert fields["subject"] == bounce.subject and text == bounce.body
    # Counted as a message accepted for A and delivered, like any other; B's one message failed.
    for agent, accepted, delivered, failed in (("A", 1, 1, 0), ("B", 1, 0, 1)):
        labels = {"agent": agent, "transport": "inbox"}
        assert value(found, "coordd_messages_accepted_total", **labels) == accepted
        assert value(found, "coordd_messages_delivered_total", **labels) == delivered
        assert value(found, "coordd_messages_failed_total", **labels) == failed

    # A restart sends nothing again: what A gets next is the next message.
    assert d.stop() == 0
    d.start()
    with d.client() as c:
        c.send("A", "after the restart", wait=True, timeout=10)
        assert len(bounces(c)) == 1
    assert [text for _, text in inbox_files(d, "A")] == [bounce.body, "after the restart"]


def test_a_cancelled_message_bounces(make_daemon):
    d = make_daemon(agents=AGENTS, delivery=MANY_TRIES, start=False)
    block_inbox(d, "B")
    d.start()
    with d.client() as c:
        quiet = [c.send("B", "from the operator"), c.send("B", "from no agent", sender="someone")]
        doomed = c.send("B", "never mind", sender="A")
        for message_id in quiet:
            wait_until(lambda: cancel_between_attempts(c, message_id), what="the cancel")
        wait_until(lambda: c.get(doomed).message.attempts >= 1, what="a failed attempt on A's message")
        wait_until(lambda: cancel_between_attempts(c, doomed), what="the cancel")
        [bounce] = bounces(c)  # stored with the cancel; only A's message has an agent to tell
        wait_until(lambda: status(c, bounce.id) == "delivered", what="the bounce to reach A")
    assert (bounce.to, bounce.reply_to, bounce.thread) == ("A", doomed, doomed)
    assert bounce.subject == f"cancelled: #{doomed} to B"
    lines = bounce.body.split("\n")
    assert lines[:2] == [f"Your message #{doomed} to B was not delivered.", 'Message: "never mind"']
    # It had failed attempts before it was cancelled: the bounce says so.
    assert lines[2].startswith("Why: it was cancelled by an operator before it was delivered (its last attempt had")
    assert "is not a directory" in lines[2]


def test_no_bounce_without_a_sending_agent_or_with_bounce_off(make_daemon, tmp_path):
    d = make_daemon(agents=AGENTS, delivery=TWO_TRIES, start=False)
    block_inbox(d, "B")
    d.start()
    with d.client() as c:
        for sender in (None, "someone"):  # the operator; a name that is no configured agent
            lost = c.send("B", "nobody to tell", sender=sender)
            wait_until(lambda: status(c, lost) == "failed", what="the message to fail")
        assert bounces(c) == []

    # [delivery] bounce = false: a failing message from an agent does not bounce either.
    (tmp_path / "off").mkdir()
    off = make_daemon(agents=AGENTS, delivery={**TWO_TRIES, "bounce": False}, start=False, sub="off")
    block_inbox(off, "B")
    off.start()
    with off.client() as c:
        lost = c.send("B", "from A", sender="A")
        wait_until(lambda: status(c, lost) == "failed", what="the message to fail")
        assert bounces(c) == []
    assert inbox_files(off, "A") == []


def test_a_bounce_that_fails_does_not_bounce(make_daemon):
    d = make_daemon(agents=AGENTS, delivery=TWO_TRIES, start=False)
    block_inbox(d, "A")
    block_inbox(d, "B")
    d.start()
    with d.client() as c:
        lost = c.send("B", "to B from A", sender="A")
        wait_until(lambda: status(c, lost) == "failed", what="the message to fail")
        [bounce] = bounces(c)
        wait_until(lambda: status(c, bounce.id) == "failed", what="the bounce to fail too")
        assert [m.id for m in c.history(limit=10).messages] == [bounce.id, lost]  # nothing bounced back
        # Retried, it fails again, and still nothing bounces; the retry's reply says A is not reachable.
        again = c.call(p.Retry(message_id=bounce.id))
        assert again.status == "queued" and not again.healthy and "is not a directory" in again.reason
        wait_until(lambda: c.get(bounce.id).message.attempts == 4, what="the retried bounce's attempts")
        wait_until(lambda: status(c, bounce.id) == "failed", what="the retried bounce to fail")
        assert [m.id for m in c.history(limit=10).messages] == [bounce.id, lost]


def test_a_bounce_stored_before_a_crash_goes_out_once(make_daemon, tmux, tmp_path):
    """The sender is down (its pane runs a shell), so its bounce waits; SIGKILL; it goes out once after."""
    from tmux_fixtures import READER, records

    out = tmp_path / "a.jsonl"
    pane = tmux.session("a", "sh")
    agent_a = {
        "id": "A",
        "transport": "tmux",
        "target": "a:0.0",
        "header": "{sender} {kind}",
        "idle_prompt": "^> ?$",  # the reader's prompt: it reads what is pasted from then on
        **tmux.agent_keys(),
    }
    d = make_daemon(agents=[agent_a, {"id": "B"}], delivery=TWO_TRIES, start=False)
    block_inbox(d, "B")
    d.start()
    with d.client() as c:
        lost = c.send("B", "to B from A", sender="A")
        wait_until(lambda: status(c, lost) == "failed", what="the message to fail")
    d.kill()  # at once: the failure and its bounce were committed together
    with sqlite3.connect(d.db) as db:
        rows = db.execute("SELECT agent, kind, reply_to, status FROM messages WHERE id > ?", (lost,)).fetchall()
    assert rows == [("A", "bounce", lost, "queued")]
    d.start()
    with d.client() as c:
        wait_until(lambda: not next(a for a in c.agents() if a.id == "A").healthy, what="A to show down")
        tmux.tmux("respawn-pane", "-k", "-t", pane, sys.executable, READER, str(out))  # A's agent runs now
        wait_until(lambda: records(out), what="the bounce to reach A")
        c.send("A", "next", wait=True, timeout=10)
        assert len(bounces(c)) == 1
    texts = [r["text"] for r in records(out)]
    assert len(texts) == 2 and texts[0].startswith("coordd bounce") and f"Your message #{lost} to B" in texts[0]
    assert texts[1].endswith("next")


# --- the send reply: is the recipient reachable now ------------------------------------------------


@pytest.fixture
def no_tmux(monkeypatch):
    """The daemon finds no tmux on its PATH, so its tmux agent is down (the transport's own check)."""
    monkeypatch.setenv("PATH", "/nonexistent")


def test_the_send_reply_says_a_down_recipient_and_the_cli_notes_it(make_daemon, no_tmux):
    agents = [{"id": "A"}, {"id": "T", "transport": "tmux", "target": "nowhere:0.0"}]
    d = make_daemon(agents=agents, delivery=FAST)
    with d.client() as c:
        healthy = c.call(p.Send(to="A", body="hi"))
        assert (healthy.healthy, healthy.reason) == (True, None)
        c.send("T", "the first tells coordd that T is down")
        wait_until(lambda: not next(a for a in c.agents() if a.id == "T").healthy, what="T to show down")
        down = c.call(p.Send(to="T", body="queued behind a down agent"))
        assert down.status == "queued" and not down.healthy and "tmux is not installed" in down.reason
    out = cli(d, "send", "T", "and one more")
    assert out.returncode == 0 and out.stdout.strip().isdigit()
    assert out.stderr.startswith("queued: T is down: tmux is not installed")
    fine = cli(d, "send", "A", "to a healthy agent")
    assert fine.returncode == 0 and fine.stderr == ""


def test_the_send_reply_says_the_last_attempt_failed(make_daemon):
    # A file in the way of T's inbox directory: each attempt fails; after the first, sends say so. (A tmux server
    # not running would not do: that holds the messages, the agent `down`, and spends no attempt.)
    d = make_daemon(agents=[{"id": "T"}, {"id": "A"}], delivery=MANY_TRIES)
    block_inbox(d, "T")
    with d.client() as c:
        first = c.call(p.Send(to="T", body="one"))
        assert first.healthy  # nothing tried yet: nothing known against it
        wait_until(lambda: c.get(first.id).message.attempts >= 1, what="a failed attempt")
        second = c.call(p.Send(to="T", body="two"))
        assert not second.healthy and second.reason.startswith("its last delivery attempt failed: ")
        assert c.call(p.Send(to="A", body="A is fine")).healthy
        # A reply decoded by a client that predates these fields: they are ignored.
        old = p.encoder.encode(second)

    class OldSent(msgspec.Struct, tag_field="type", tag="sent", kw_only=True):  # the reply before these fields
        rid: int = 0
        id: int
        status: str = "queued"
        duplicate: bool = False

    assert msgspec.msgpack.decode(old, type=OldSent).id == second.id


def test_no_one_can_send_a_bounce(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    with d.client() as c:
        for send in (
            lambda: c.send("A", "your message failed", sender="B", kind="bounce"),
            lambda: c.batch([{"to": "A", "body": "x"}, {"to": "A", "body": "forged", "kind": "bounce"}]),
            lambda: c.broadcast("forged", kind="bounce"),
        ):
            with pytest.raises(CoordError) as refused:
                send()
            assert refused.value.code == "bad_request" and '"bounce"' in refused.value.message
        assert c.history(limit=10).messages == []
