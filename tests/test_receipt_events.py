"""Receipts in `watch` and the metrics: `read` and `acked` events after `delivered`, and their counters."""

from __future__ import annotations

import json

from conftest import wait_until
from test_metrics import samples, value
from test_watch import Collector, coordctl


def test_a_watcher_sees_read_and_acked_after_delivered_once_each(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    with d.client() as c:
        watcher = Collector(d.socket)
        try:
            fetched, acked_unread, fetch_acked = (c.send("A", f"m{i}", sender="S") for i in range(3))
            urgent = c.send("B", "urgent", priority="urgent", wait=True)
            wait_until(lambda: c.get(fetch_acked).message.status == "delivered", what="delivery to A")
            assert [m.id for m in c.inbox("A", limit=1)] == [fetched]  # read, not acked
            assert c.inbox("A", unread=False, limit=1)[0].id == fetched  # read again: no second event
            assert c.ack("A", [fetched, acked_unread]) == 2  # acked_unread: read and acked at once
            assert c.ack("A", [fetched]) == 0  # acked before: no event
            assert [m.id for m in c.inbox("A", ack=True)] == [fetch_acked]
            assert [m.id for m in c.inbox("B", ack=True)] == [urgent]
            wait_until(lambda: sum(e.event == "acked" for e in watcher.events()) == 4, what="4 acked events")
        finally:
            watcher.stop()
        stored = {m: c.get(m).message for m in (fetched, acked_unread, fetch_acked, urgent)}
    by_message: dict[int, list[str]] = {}
    for e in watcher.events():
        by_message.setdefault(e.id, []).append(e.event)
    for m in stored:
        assert by_message[m] == ["accepted", "delivering", "delivered", "read", "acked"], m
    receipts = [e for e in watcher.events() if e.event in ("read", "acked")]
    for e in receipts:  # the time is the stored receipt's; sender and priority are the message's
        info = stored[e.id]
        assert e.time == (info.read_at if e.event == "read" else info.acked_at)
        assert (e.agent, e.sender, e.priority) == (("B", None, "urgent") if e.id == urgent else ("A", "S", "regular"))
    assert [(e.event, e.id) for e in receipts if e.agent == "A"] == [
        ("read", fetched),
        ("read", acked_unread),
        ("acked", fetched),
        ("acked", acked_unread),
        ("read", fetch_acked),
        ("acked", fetch_acked),
    ]


def test_cli_watch_filters_receipt_events_and_prints_them(daemon):
    with daemon.client() as c:
        m = c.send("Agent-1", "read me", sender="Agent-2", wait=True)
        as_json = coordctl(daemon, "watch", "--event", "read", "--event", "acked", "--json")
        human = coordctl(daemon, "watch", "--event", "acked")
        try:
            wait_until(lambda: c.status().watchers == 2, what="both watchers to subscribe")
            c.inbox("Agent-1")
            c.ack("Agent-1", [m])
            lines = [json.loads(as_json.stdout.readline()) for _ in range(2)]
            assert [(x["event"], x["id"], x["sender"]) for x in lines] == [
                ("read", m, "Agent-2"),
                ("acked", m, "Agent-2"),
            ]
            line = human.stdout.readline()
            assert "acked" in line and f"#{m} -> Agent-1  from Agent-2" in line
        finally:
            for p in (as_json, human):
                p.kill()
                p.wait(10)


def test_read_and_acked_counters_count_each_receipt_once(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    with d.client() as c:
        ids = [c.send("A", f"m{i}") for i in range(4)]
        wait_until(lambda: c.get(ids[-1]).message.status == "delivered", what="delivery")
        found = samples(c.metrics())
        for what in ("read", "acked"):
            assert value(found, f"coordd_messages_{what}_total", agent="A", transport="inbox") == 0
            assert value(found, f"coordd_messages_{what}_total", agent="B", transport="inbox") == 0
        c.inbox("A", limit=2)
        c.inbox("A", unread=False)  # the two read before count once
        c.ack("A", ids[:1] + ids[3:])  # ids[3] unread: read and acked
        c.ack("A", ids[:1])  # acked before: not counted
        found = samples(c.metrics())
        assert value(found, "coordd_messages_read_total", agent="A", transport="inbox") == 4
        assert value(found, "coordd_messages_acked_total", agent="A", transport="inbox") == 2
        assert value(found, "coordd_messages_read_total", agent="B", transport="inbox") == 0


def test_history_follow_goes_on_with_receipts_after_a_page_of_read_messages(daemon):
    with daemon.client() as c:
        old = c.send("Agent-1", "read before the follow", wait=True)
        c.inbox("Agent-1")
        follow = coordctl(daemon, "--json", "history", "--follow", "--agent", "Agent-1", "--limit", "1")
        try:
            assert json.loads(follow.stdout.readline())["id"] == old
            wait_until(lambda: c.status().watchers == 1, what="history --follow to subscribe")
            new = c.send("Agent-1", "new one", wait=True)
            c.inbox("Agent-1", ack=True)
            c.ack("Agent-1", [old])
            live = [json.loads(follow.stdout.readline()) for _ in range(6)]
            assert [(e["event"], e["id"]) for e in live] == [
                ("accepted", new),
                ("delivering", new),
                ("delivered", new),
                ("read", new),
                ("acked", new),
                ("acked", old),
            ]
        finally:
            follow.kill()
            follow.wait(10)
