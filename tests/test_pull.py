"""Pull agents: nothing is pushed; a fetch (the inbox request) delivers, under a lease; what is not acked comes back.

Also the rules of `ack` every agent shares: a message not delivered (for a pull agent: not fetched) cannot be
acknowledged, and each read and acked receipt is reported once even when an ack races a fetch.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import inbox_bodies, wait_until, write_config
from test_cli import ok
from test_metrics import samples, value

from coordctl import AsyncClient, CoordError

PULL = {"id": "P", "transport": "pull"}
DOWN = {"id": "Down", "transport": "tmux", "target": "nowhere:0.0"}  # never delivered: keeps its messages queued


def fetch_all(c, agent: str, n: int, wait: float = 10.0) -> list:
    """Fetch until n messages came (long-polls: each returns as soon as some can be fetched)."""
    got: list = []
    deadline = time.monotonic() + wait
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {n} messages were fetched within {wait} s"
        got += c.inbox(agent, limit=1000, wait=left)
    return got


def test_a_pull_agent_gets_1000_in_order_and_what_it_does_not_ack_comes_back_after_the_lease(make_daemon):
    d = make_daemon(agents=[PULL], pull={"lease_s": 1.0})
    with d.client() as c:
        ids = c.batch([{"to": "P", "body": f"m{i}"} for i in range(1000)])
        assert c.get(ids[0]).message.status == "queued"  # nothing is pushed

        first = [m for _ in range(10) for m in c.inbox("P", limit=100)]
        assert [m.id for m in first] == ids and [m.body for m in first] == [f"m{i}" for i in range(1000)]
        assert all(m.status == "delivered" and m.fetches == 1 and m.read_at and m.acked_at is None for m in first)
        assert all(m.lease_until is not None and m.lease_until - m.delivered == pytest.approx(1.0) for m in first)
        stored = c.get(ids[7]).message
        assert (stored.status, stored.fetches, stored.lease_until, stored.attempts) == (
            "delivered",
            1,
            first[7].lease_until,
            1,
        )
        assert c.inbox("P") == []  # all leased

        acked, unacked = ids[::2], ids[1::2]
        assert c.ack("P", acked[:250]) + c.ack("P", acked[250:]) == 500
        again = fetch_all(c, "P", 500)  # once the leases end
        assert [m.id for m in again] == unacked
        assert all(m.fetches == 2 and m.read_at == first[ids.index(m.id)].read_at for m in again)
        assert c.get(unacked[0]).message.attempts == 2

        assert c.ack("P", unacked[:400]) + c.ack("P", unacked[400:]) == 500
        assert c.inbox("P", wait=1.5) == []  # past a lease: nothing comes back once all are acked
        assert all(m.acked_at for m in c.history(agent="P", limit=1000).messages)


def test_a_fetch_with_ack_is_acknowledged_at_once_and_urgent_comes_first(make_daemon):
    d = make_daemon(agents=[PULL], pull={"lease_s": 0.5})
    with d.client() as c:
        regular = c.send("P", "regular")
        urgent = c.send("P", "urgent", priority="urgent")
        got = c.inbox("P", ack=True)
        assert [m.id for m in got] == [urgent, regular]  # as a push agent's worker would deliver them
        assert all(m.acked_at and m.lease_until is None for m in got)
        assert c.inbox("P", wait=1.0) == []  # acked: no lease to end
        assert c.ack("P", [regular]) == 0


def test_nothing_is_lost_across_a_sigkill_between_fetch_and_ack(make_daemon):
    d = make_daemon(agents=[PULL, {"id": "A"}], pull={"lease_s": 2.0})
    with d.client() as c:
        ids = c.batch([{"to": "P", "body": f"m{i}"} for i in range(20)])
        fetched = [m.id for m in c.inbox("P", limit=10)]
        assert fetched == ids[:10]
        assert c.ack("P", fetched[:4]) == 4
    d.kill()
    d.start()
    with d.client() as c:
        assert [m.id for m in c.inbox("P", limit=100)] == ids[10:]  # queued ones: at once
        assert c.status().agents[0].leased == 16
        back = fetch_all(c, "P", 6)  # leased, not acked: once their lease ends
        assert [m.id for m in back] == fetched[4:] and all(m.fetches == 2 for m in back)
        assert c.ack("P", ids[4:]) == 16
        assert c.inbox("P", wait=2.5) == []
        assert [m.id for m in c.history(agent="P", limit=100).messages if m.acked_at] == ids[::-1]


def test_a_long_poll_wakes_when_a_message_is_queued_and_when_a_lease_ends(make_daemon):
    d = make_daemon(agents=[PULL], pull={"lease_s": 1.0})
    with d.client() as c, d.client() as sender, ThreadPoolExecutor(1) as pool:
        polling = pool.submit(c.inbox, "P", wait=30)
        assert not polling.done()
        m = sender.send("P", "wake up")
        got = polling.result(timeout=10)  # well before its 30 s
        assert [(x.id, x.fetches) for x in got] == [(m, 1)]

        start = time.monotonic()
        again = c.inbox("P", wait=30)  # nothing to fetch until the lease ends
        assert [(x.id, x.fetches) for x in again] == [(m, 2)]
        assert 0.5 < time.monotonic() - start < 10


def test_status_shows_a_pull_agents_backlog_and_the_queue_limits_bound_it(make_daemon):
    d = make_daemon(agents=[PULL, {"id": "A"}], queue={"max_per_agent": 3})
    with d.client() as c:
        ids = [c.send("P", f"m{i}") for i in range(3)]
        assert [m.id for m in c.inbox("P", limit=1)] == ids[:1]
        with pytest.raises(CoordError) as e:  # 2 queued + 1 leased: the limit counts the whole backlog
            c.send("P", "one too many")
        assert e.value.code == "queue_full"
        p, a = c.status().agents
        assert (p.transport, p.queued, p.leased) == ("pull", 2, 1)
        assert p.oldest_unacked_age is not None and p.oldest_unacked_age >= 0
        assert (a.leased, a.oldest_unacked_age) == (0, None)
        c.ack("P", ids[:1])
        assert c.send("P", "room again") > 0
    table = ok(d, "status")
    header = next(line.split() for line in table.splitlines() if line.startswith("AGENT"))
    assert header[:6] == ["AGENT", "TRANSPORT", "HEALTH", "QUEUED", "IN", "FLIGHT"] and "UNACKED" in header
    row = next(line.split() for line in table.splitlines() if line.startswith("P "))
    assert row[1:5] == ["pull", "ok", "3", "0"] and row[5] == "0"  # queued 3, in flight 0, unacked 0
    as_json = json.loads(ok(d, "--json", "status"))
    assert as_json["agents"][0]["transport"] == "pull" and "oldest_unacked_age" in as_json["agents"][0]


def test_status_of_push_agents_only_has_no_unacked_column(daemon):
    assert "UNACKED" not in ok(daemon, "status")


def test_reload_between_push_and_pull_keeps_every_message(make_daemon):
    d = make_daemon(agents=[DOWN], pull={"lease_s": 1.0})
    sections = {
        "daemon": {"socket": d.socket, "workspace": str(d.workspace)},
        "store": {"path": d.db},
        "pull": {"lease_s": 1.0},
    }
    with d.client() as c:
        ids = c.batch([{"to": "Down", "body": f"m{i}"} for i in range(6)])
        write_config(d.config, sections, [{"id": "Down", "transport": "pull"}])
        assert c.reload().changed == ["Down"]
        # A tmux attempt in progress at the reload finishes on tmux (and fails), then all 6 are in the queue:
        # a long-poll is answered then.
        assert [m.id for m in c.inbox("Down", limit=2, wait=10)] == ids[:2]  # queued while pushed: fetched now
        assert c.ack("Down", ids[:1]) == 1
        write_config(d.config, sections, [{"id": "Down"}])  # an inbox agent now
        assert c.reload().changed == ["Down"]
        # The 4 queued go out at once; the one leased and not acked once its lease ends; the acked one never.
        wait_until(lambda: len(inbox_bodies(d.inbox("Down"))) == 5, what="the inbox files")
        assert sorted(inbox_bodies(d.inbox("Down"))) == [f"m{i}" for i in range(1, 6)]
        assert all(c.get(i).message.status == "delivered" for i in ids)
        # Pushed now: not leased any more (a restart would not lease it again).
        wait_until(lambda: c.get(ids[1]).message.lease_until is None, what="the pushed delivery to be stored")


def test_ack_of_a_message_not_delivered_is_refused(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, DOWN, PULL])
    with d.client() as c:
        queued = c.send("Down", "never delivered")
        with pytest.raises(CoordError) as e:
            c.ack("Down", [queued])
        assert e.value.code == "bad_state"
        assert re.match(f"message {queued} is (queued|delivering): ", e.value.message)  # (a tmux attempt may be on)
        assert "once it is delivered" in e.value.message

        delivered = c.send("A", "delivered", wait=True)
        pulled = c.send("P", "not fetched yet")
        with pytest.raises(CoordError) as e:
            c.ack("P", [pulled])
        assert (
            e.value.code == "bad_state"
            and "coordctl inbox P" in e.value.message
            and "fetch it first" in e.value.message
        )
        assert c.get(pulled).message.acked_at is None
        assert [m.id for m in c.inbox("P")] == [pulled]
        assert c.ack("P", [pulled]) == 1 and c.ack("A", [delivered]) == 1


def test_read_and_acked_are_reported_once_when_acks_race_fetches(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, PULL])
    with d.client() as c:
        ids = c.batch([{"to": "A", "body": f"m{i}"} for i in range(20)])
        pulled = c.batch([{"to": "P", "body": f"p{i}"} for i in range(20)])
        wait_until(lambda: c.get(ids[-1]).message.status == "delivered", what="delivery")

    async def race() -> None:
        async with AsyncClient(d.socket) as ac:  # pipelined: the daemon has them all at once
            await asyncio.gather(
                *(ac.inbox("A", limit=1) for _ in range(20)), *(ac.ack("A", [i]) for i in ids), ac.inbox("P", limit=100)
            )
            await asyncio.gather(*(ac.ack("P", [i]) for i in pulled), *(ac.ack("P", pulled) for _ in range(3)))

    asyncio.run(race())
    with d.client() as c:
        found = samples(c.metrics())
        for agent, transport in (("A", "inbox"), ("P", "pull")):
            assert value(found, "coordd_messages_read_total", agent=agent, transport=transport) == 20
            assert value(found, "coordd_messages_acked_total", agent=agent, transport=transport) == 20


def test_retention_never_prunes_what_a_pull_agent_has_not_acked(make_daemon):
    d = make_daemon(agents=[PULL, {"id": "A"}], retention={"max_messages": 5})
    with d.client() as c:
        pulled = c.batch([{"to": "P", "body": f"p{i}"} for i in range(5)])
        assert len(c.inbox("P", limit=10)) == 5  # delivered, leased, not acked
        c.ack("P", pulled[:2])
        pushed = [c.send("A", f"a{i}", wait=True) for i in range(5)]
        wait_until(lambda: c.status().rows <= 8, what="retention to prune")  # 3 leased + at most 5
        kept = {m.id for m in c.history(limit=100).messages}
        assert set(pulled[2:]) <= kept and not set(pulled[:2]) & kept  # acked: prunable; leased: kept
        assert pushed[-1] in kept


def test_pull_lease_s_must_be_positive():
    from coordd import config

    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(config.ConfigError, match=r"pull\.lease_s"):
            config.parse({"pull": {"lease_s": bad}, "agents": [PULL]}, "t")
    parsed = config.parse({"agents": [dict(PULL)]}, "t")
    assert parsed.pull.lease_s == 300 and isinstance(parsed.agents[0], config.PullAgent)
