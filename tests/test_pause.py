"""Pause and resume (`coordctl pause AGENT [--for D]`, `resume AGENT`): an agent's messages queue but are not
delivered while it is paused; resuming delivers them in order; a pause survives a restart, and one with a
duration ends by itself."""

from __future__ import annotations

import json
import time

import pytest
from conftest import inbox_bodies, wait_until
from test_cli import cli, ok
from test_watch import Collector

from coordctl import CoordError, protocol

PULL = {"id": "P", "transport": "pull"}


def agent_status(c, agent: str) -> protocol.AgentStatus:
    return next(a for a in c.status().agents if a.id == agent)


def statuses(c, ids: list[int]) -> list[str]:
    return [c.get(i).message.status for i in ids]


def test_a_paused_agent_gets_nothing_until_resumed_then_everything_in_order(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    watch = Collector(d.socket, agents=["A"])
    try:
        assert ok(d, "pause", "A").strip() == "A paused until resumed (0 messages queued)"
        with d.client() as c:
            st = agent_status(c, "A")
            assert st.paused and st.paused_since is not None and st.paused_until is None
            sent = c.call(protocol.Send(to="A", body="first"))
            assert isinstance(sent, protocol.Sent) and not sent.healthy and "paused" in (sent.reason or "")
            ids = [sent.id, *(c.send("A", f"body {n}") for n in range(2, 6))]
            other = c.send("B", "B is not paused", wait=True)  # delivered: deliveries go on for the others
            assert c.get(other).message.status == "delivered"
            assert statuses(c, ids) == ["queued"] * 5
            assert inbox_bodies(d.inbox("A")) == []
            assert agent_status(c, "A").queued == 5
        out = cli(d, "send", "A", "one more")
        assert out.returncode == 0 and "queued: A is paused since " in out.stderr
        ids.append(int(out.stdout))
        table = ok(d, "status")
        assert "paused until resumed" in table
        listed = json.loads(ok(d, "--json", "agents"))["agents"]
        assert [a["paused"] for a in listed] == [True, False]
        assert "paused" in ok(d, "agents")
        assert "6 messages queued" in ok(d, "resume", "A")
        with d.client() as c:
            wait_until(lambda: statuses(c, ids) == ["delivered"] * 6, what="A's messages delivered after resume")
            assert not agent_status(c, "A").paused
        assert inbox_bodies(d.inbox("A")) == ["first", "body 2", "body 3", "body 4", "body 5", "one more"]
        # Watch: every message was accepted while paused, and none delivering before the resume's deliveries.
        wait_until(lambda: len([e for e in watch.events() if e.event == "delivered"]) == 6, what="6 delivered events")
        kinds = [e.event for e in watch.events() if e.event != "held"]
        assert kinds[:6] == ["accepted"] * 6 and "delivering" in kinds[6:]
        held = [e for e in watch.events() if e.event == "held"]  # each said once why it waits
        assert sorted(e.id for e in held) == ids and all(e.reason.startswith("paused") for e in held)
        assert [e.id for e in watch.events() if e.event == "delivered"] == ids  # in the order they were sent
        assert "A is not paused" in ok(d, "resume", "A")  # resuming again changes nothing
    finally:
        watch.stop()


def test_pause_for_ends_by_itself_and_its_row_goes(make_daemon):
    d = make_daemon(agents=[{"id": "A"}])
    out = ok(d, "pause", "A", "--for", "1s")
    assert out.startswith("A paused until ")
    with d.client() as c:
        st = agent_status(c, "A")
        assert st.paused and st.paused_until is not None and st.paused_until - st.paused_since == pytest.approx(1.0)
        held = c.send("A", "held for a second")
        assert c.get(held).message.status == "queued"
        wait_until(lambda: c.get(held).message.status == "delivered", what="the pause to end by itself")
        assert not agent_status(c, "A").paused
    d.stop()
    d.start()
    with d.client() as c:
        assert not agent_status(c, "A").paused
        c.send("A", "after the restart", wait=True)


def test_a_pause_survives_a_restart(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    ok(d, "pause", "A")
    ok(d, "pause", "B", "--for", "1h")
    with d.client() as c:
        until = agent_status(c, "B").paused_until
        held = c.send("A", "kept across the restart")
    d.stop()
    d.start()
    with d.client() as c:
        a, b = agent_status(c, "A"), agent_status(c, "B")
        assert a.paused and a.paused_until is None and a.queued == 1
        assert b.paused and b.paused_until == until
        assert c.get(held).message.status == "queued"
        c.resume("A")
        wait_until(lambda: c.get(held).message.status == "delivered", what="the held message after resume")
        assert c.resume("B").paused is False
    d.stop()
    d.start()
    with d.client() as c:
        assert not agent_status(c, "A").paused and not agent_status(c, "B").paused


def test_a_group_never_picks_a_paused_member_while_another_is_up(make_daemon):
    d = make_daemon(agents=[{"id": "A", "groups": ["g"]}, {"id": "B", "groups": ["g"]}])
    with d.client() as c:
        c.pause("A")
        ids = [c.send("@g", f"m{n}") for n in range(4)]
        assert [c.get(i).message.to for i in ids] == ["B"] * 4
        c.pause("B")  # none up: picked among all, and it waits there
        waiting = c.send("@g", "both paused")
        assert c.get(waiting).message.to in ("A", "B")
        assert c.get(waiting).message.status == "queued"
        c.resume("A")
        c.resume("B")
        picked = {c.get(c.send("@g", f"again {n}")).message.to for n in range(2)}
        assert picked == {"A", "B"}
        wait_until(lambda: c.get(waiting).message.status == "delivered", what="the message sent while all paused")


def test_a_paused_pull_agent_fetches_nothing_new(make_daemon):
    d = make_daemon(agents=[PULL])
    with d.client() as c:
        c.pause("P")
        sent = c.send("P", "for later")
        assert c.inbox("P") == []
        t0 = time.monotonic()
        assert c.inbox("P", wait=0.3) == []  # a long-poll waits its time out, fetching nothing
        assert time.monotonic() - t0 >= 0.3
        assert c.get(sent).message.status == "queued"
        c.resume("P")
        assert [m.id for m in c.inbox("P")] == [sent]


def test_pause_refuses_bad_input(make_daemon):
    d = make_daemon(agents=[{"id": "A"}])
    with d.client() as c:
        with pytest.raises(CoordError) as e:
            c.pause("Nobody")
        assert e.value.code == "unknown_agent"
        for bad in (0.0, -5.0, float("inf"), 1e12):
            with pytest.raises(CoordError) as e:
                c.pause("A", duration=bad)
            assert e.value.code == "bad_request" and "duration" in e.value.message
        assert not agent_status(c, "A").paused  # nothing changed
    out = cli(d, "pause", "A", "--for", "soon")
    assert out.returncode == 2 and "not a duration" in out.stderr
