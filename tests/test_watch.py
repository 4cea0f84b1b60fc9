"""`watch`: events pushed as they happen, in order, filtered; a watcher that never reads slows nobody."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
from datetime import datetime

import pytest
from conftest import wait_until

from coordctl import AsyncClient, Client, CoordError, DaemonUnavailable, protocol

FAST_FAIL = {"max_attempts": 2, "backoff_initial_ms": 20, "backoff_max_ms": 20}
TERMINAL = {"delivered", "failed", "cancelled"}


def block_inbox(d, agent: str) -> None:
    d.inbox(agent).parent.mkdir(parents=True, exist_ok=True)
    d.inbox(agent).write_text("a file where the inbox directory should be: every delivery fails")


class Collector(threading.Thread):
    """Reads a watch on its own connection, in a thread, until told to stop or `until` holds."""

    def __init__(self, socket_path: str, **filters) -> None:
        super().__init__(daemon=True)
        self.client = Client(socket_path)
        self.stream = self.client.watch(**filters)  # subscribed once this returns
        self.items: list[protocol.Event | protocol.Missed] = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for item in self.stream:
                self.items.append(item)
        except BaseException as e:  # the test stops us by closing the socket, or the daemon stopped
            self.error = e

    def events(self) -> list[protocol.Event]:
        return [e for e in list(self.items) if type(e) is protocol.Event]

    def stop(self) -> None:
        sock = self.client._sock
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read; the thread then ends
        self.join(10)


def test_a_watcher_sees_every_event_in_order(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}, {"id": "Bad"}], delivery=FAST_FAIL, start=False)
    block_inbox(d, "Bad")
    d.start()
    with d.client() as c:
        before = c.send("A", "sent before the watch", wait=True)
        watcher = Collector(d.socket)
        try:
            ids = {"A": [], "B": [], "Bad": []}
            for i in range(30):
                agent = "AB"[i % 2]
                ids[agent].append(
                    c.send(agent, f"message {i}\nline two", sender="tester", priority="urgent" if i == 7 else "regular")
                )
            ids["Bad"] = c.batch([{"to": "Bad", "body": "doomed 1"}, {"to": "Bad", "body": "doomed 2"}])
            everything = [m for agent_ids in ids.values() for m in agent_ids]
            wait_until(
                lambda: {e.id for e in watcher.events() if e.event in TERMINAL} >= set(everything),
                what="a terminal event for every message",
            )
        finally:
            watcher.stop()
    events = watcher.events()
    assert not [m for m in watcher.items if type(m) is protocol.Missed]
    assert before not in {e.id for e in events}  # only what happened after the watch began
    by_message: dict[int, list[str]] = {}
    for e in events:
        by_message.setdefault(e.id, []).append(e.event)
    for m in ids["A"] + ids["B"]:
        assert by_message[m] == ["accepted", "delivering", "delivered"], m
    for m in ids["Bad"]:  # handed over with the other one: when that fails first, it goes back untried
        assert [x for x in by_message[m] if x != "delivering"] == ["accepted", "retried", "failed"], m
        assert by_message[m][1] == by_message[m][-2] == "delivering"
    accepted = [e for e in events if e.event == "accepted"]
    assert [e.id for e in accepted] == sorted(e.id for e in accepted)  # the order they were accepted in
    assert accepted[0].preview == "message 0" and accepted[0].sender == "tester"
    assert next(e for e in accepted if e.id == ids["B"][3]).priority == "urgent"
    for agent in ("A", "B"):  # each agent's deliveries in send order
        assert [e.id for e in events if e.event == "delivered" and e.agent == agent] == ids[agent]
    delivered = [e for e in events if e.event == "delivered"]
    assert all(e.latency is not None and e.latency >= 0 and e.attempt == 1 for e in delivered)
    retried = [e for e in events if e.event == "retried"]
    assert all(e.error and "inbox" in e.error and e.retry_in == 0.02 and e.attempt == 1 for e in retried)
    assert all(e.attempt == 2 and e.error for e in events if e.event == "failed")
    times = [e.time for e in events if e.event != "accepted"]
    assert times == sorted(times)


def test_filters_by_agent_and_event_type(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    with d.client() as c:
        only = Collector(d.socket, agents=["A"], events=["delivered", "cancelled"])
        try:
            a = [c.send("A", f"a{i}") for i in range(3)]
            c.send("B", "not watched", wait=True)
            wait_until(lambda: len(only.events()) == 3, what="3 deliveries to A")
            c.send("B", "not watched either", wait=True)
            assert c.send("A", "the last one", wait=True)
            wait_until(lambda: len(only.events()) == 4, what="the 4th delivery to A")
        finally:
            only.stop()
        assert [(e.event, e.agent) for e in only.events()] == [("delivered", "A")] * 4
        assert [e.id for e in only.events()][:3] == a
        with pytest.raises(CoordError) as e:
            Client(d.socket).watch(agents=["Nobody"])
        assert e.value.code == "unknown_agent"


def read_frame(stream) -> protocol.Reply:
    size = int.from_bytes(stream.read(4), "big")
    return protocol.reply_decoder.decode(stream.read(size))


def test_events_that_happen_together_share_a_frame_of_at_most_256(daemon):
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(daemon.socket)
    raw.settimeout(10)
    req = protocol.encoder.encode(protocol.Watch(rid=5, events=["accepted"]))
    raw.sendall(len(req).to_bytes(4, "big") + req)
    stream = raw.makefile("rb")
    assert type(read_frame(stream)) is protocol.Watching
    with daemon.client() as c:
        ids = c.batch([{"to": "Agent-1", "body": f"m{i}"} for i in range(600)])  # 600 accepted events at once
    frames: list[protocol.Events] = []
    while sum(len(f.events) for f in frames) < len(ids):
        frames.append(read_frame(stream))
    assert {type(f) for f in frames} == {protocol.Events} and {f.rid for f in frames} == {5}
    assert [e.id for f in frames for e in f.events] == ids  # in order, none twice
    assert len(frames) >= 3 and max(len(f.events) for f in frames) == 256
    raw.close()


def test_a_watcher_that_never_reads_slows_nobody_and_is_told_what_it_missed(make_daemon):
    # A small write buffer, so the stuck watcher is behind after a few hundred KiB (the socket's own buffer).
    d = make_daemon(
        agents=[{"id": "A"}, {"id": "B"}], daemon={"max_write_buffer_bytes": 65536}, metrics={"watch_buffer": 100}
    )
    stuck = socket.socket(socket.AF_UNIX)
    stuck.connect(d.socket)
    req = protocol.encoder.encode(protocol.Watch(rid=7, agents=["A"]))
    stuck.sendall(len(req).to_bytes(4, "big") + req)
    with d.client() as c:
        wait_until(lambda: c.status().watchers == 1, what="the stuck watcher to subscribe")
        reader = Collector(d.socket, agents=["A"])
        try:
            n = 3000
            for start in range(0, n, 1000):
                c.batch([{"to": "A", "body": f"m{i}"} for i in range(start, start + 1000)])
                c.batch([{"to": "B", "body": f"m{i}"} for i in range(start, start + 1000)])
            wait_until(
                lambda: sum(e.event == "delivered" for e in reader.events()) == n,
                timeout=60,
                what="the reading watcher to see every delivery",
            )
            wait_until(
                lambda: {a.id: a.delivered for a in c.status().agents} == {"A": n, "B": n},
                timeout=60,
                what="every message delivered",
            )
            assert c.status().watchers == 2
        finally:
            reader.stop()
    seen = reader.events()
    assert len(seen) == 3 * n and not [m for m in reader.items if type(m) is protocol.Missed]
    # Now the stuck one reads: the events that fit in its buffers, then how many it missed, then it is live.
    stuck.settimeout(10)
    got, missed, stream = [], 0, stuck.makefile("rb")
    while len(got) + missed < len(seen):
        item = read_frame(stream)
        assert item.rid == 7
        if type(item) is protocol.Missed:
            missed += item.count
        elif type(item) is protocol.Events:
            got += [(e.event, e.id) for e in item.events]
    assert 0 < len(got) < len(seen)
    assert got == [(e.event, e.id) for e in seen[: len(got)]]  # what it got is in order, with one gap at the end
    assert missed == len(seen) - len(got)
    with d.client() as c:
        late = c.send("A", "after catching up", wait=True)
    while True:
        item = read_frame(stream)
        if type(item) is protocol.Events and ("delivered", late) in [(e.event, e.id) for e in item.events]:
            break
    stuck.close()


def test_async_watch_ends_with_unwatch_and_the_connection_goes_on(daemon):
    async def main() -> None:
        async with AsyncClient(daemon.socket) as c:
            sub = await c.watch(events=["delivered"])
            first = await c.send("Agent-1", "one", wait=True)
            event = await asyncio.wait_for(sub.__anext__(), 10)
            assert (event.event, event.id) == ("delivered", first)
            await sub.aclose()
            assert (await c.status()).watchers == 0
            await c.send("Agent-1", "two", wait=True)  # the connection still works, and no event comes for it
            assert [e async for e in sub] == []
            async with await c.watch() as again:
                await c.send("Agent-2", "three")
                assert (await asyncio.wait_for(again.__anext__(), 10)).event == "accepted"

    asyncio.run(main())


def test_a_watch_ends_when_the_daemon_stops(daemon):
    watcher = Collector(daemon.socket)
    daemon.stop()
    watcher.join(10)
    assert isinstance(watcher.error, DaemonUnavailable)


def coordctl(d, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "COORDD_SOCKET"}
    return subprocess.Popen(
        [sys.executable, "-m", "coordctl", "--socket", d.socket, *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_cli_watch_prints_json_lines_and_human_lines(daemon):
    with daemon.client() as c:
        as_json = coordctl(daemon, "watch", "--agent", "Agent-1", "--json")
        human = coordctl(daemon, "watch", "--event", "delivered")
        try:
            wait_until(lambda: c.status().watchers == 2, what="both watchers to subscribe")
            c.send("Agent-2", "not for the JSON watcher", wait=True)
            m = c.send("Agent-1", "hello watchers", sender="Agent-3", wait=True)
            lines = [json.loads(as_json.stdout.readline()) for _ in range(3)]
            assert [(x["event"], x["id"]) for x in lines] == [("accepted", m), ("delivering", m), ("delivered", m)]
            assert lines[0]["preview"] == "hello watchers" and lines[0]["sender"] == "Agent-3"
            assert lines[2]["latency"] > 0 and lines[2]["error"] is None  # every field, defaults too
            iso = datetime.fromisoformat(lines[0]["time_iso"])  # beside the unix seconds, with the offset
            assert iso.utcoffset() is not None and abs(iso.timestamp() - lines[0]["time"]) < 1e-5
            assert "delivered" in human.stdout.readline()
            second = human.stdout.readline()
            assert "delivered" in second and f"#{m} -> Agent-1" in second and "after" in second
            assert re.match(r"\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d  delivered", second), second  # local, its offset
        finally:
            for p in (as_json, human):
                p.kill()
                p.wait(10)
    refused = subprocess.run(
        [sys.executable, "-m", "coordctl", "--socket", daemon.socket, "watch", "--agent", "X"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "unknown_agent" in refused.stderr


def test_history_follow_prints_the_page_then_what_happens(daemon):
    with daemon.client() as c:
        old = [c.send("Agent-1", f"old {i}", wait=True) for i in range(3)]
        follow = coordctl(daemon, "--json", "history", "--follow", "--agent", "Agent-1", "--limit", "2")
        try:
            page = [json.loads(follow.stdout.readline()) for _ in range(2)]
            assert [m["id"] for m in page] == old[1:]  # the newest page, oldest first
            wait_until(lambda: c.status().watchers == 1, what="history --follow to subscribe")
            new = c.send("Agent-1", "new one", wait=True)
            c.send("Agent-2", "another agent's", wait=True)
            live = [json.loads(follow.stdout.readline()) for _ in range(3)]
            assert [(e["event"], e["id"]) for e in live] == [("accepted", new), ("delivering", new), ("delivered", new)]
        finally:
            follow.kill()
            follow.wait(10)
    usage = subprocess.run(
        [sys.executable, "-m", "coordctl", "--socket", daemon.socket, "history", "--follow", "--cursor", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert usage.returncode == 2
