"""The core daemon through the coordctl library: methods, ordering, idempotency, limits, retention, restarts."""

from __future__ import annotations

import os
import stat
import sys

import figures
import pytest
from conftest import (
    Daemon,
    cancel_between_attempts,
    concurrently,
    inbox_bodies,
    read_inbox_file,
    run_as,
    wait_until,
    write_config,
)

from coordctl import PROTOCOL_VERSION, Client, CoordError

FAST_RETRY = {"backoff_initial_ms": 20, "backoff_max_ms": 100, "unhealthy_recheck_ms": 50}


def all_done(c: Client, n: int, status: str = "delivered") -> bool:
    page = c.history(status=status, limit=1000)
    return len(page.messages) >= n


def block_inbox(d: Daemon, agent: str) -> None:
    """A regular file where the inbox directory should be: deliveries fail until it is removed (works as root)."""
    path = d.inbox(agent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a directory")


def unblock_inbox(d: Daemon, agent: str) -> None:
    d.inbox(agent).unlink()


def test_every_method(daemon: Daemon):
    with daemon.client() as c:
        pong = c.ping()
        assert pong.protocol == 3 and pong.version  # docs/protocol.md's version
        assert [a.id for a in c.agents()] == ["Agent-1", "Agent-2", "Agent-3", "Agent-4"]
        first = c.send("Agent-1", "hello\nsecond line", sender="Agent-2", kind="review", tags=["pr-42"], wait=True)
        msg = c.get(first)
        assert msg.message.status == "delivered" and msg.message.sender == "Agent-2"
        assert msg.message.kind == "review" and msg.message.tags == ["pr-42"]
        assert [a.ok for a in msg.attempts] == [True]
        ids = c.batch([{"to": "Agent-2", "body": "b1"}, {"to": "Agent-3", "body": "b2", "priority": "urgent"}])
        assert len(ids) == 2 and ids[0] < ids[1]
        everyone = c.broadcast("all hands", sender="lead")  # not an agent: every agent gets a copy
        assert len(everyone) == 4
        wait_until(lambda: all_done(c, 7), what="7 deliveries")
        status = c.status()
        assert status.rows == 7 and status.queued == 0
        assert {a.id: a.delivered for a in status.agents} == {"Agent-1": 2, "Agent-2": 2, "Agent-3": 2, "Agent-4": 1}
        page = c.history(agent="Agent-1")
        assert [m.id for m in page.messages] == [everyone[0], first]  # newest first
        assert c.history(contains="second line").messages[0].id == first
        assert c.history(sender="lead", limit=2).cursor is not None
    fields, body = read_inbox_file(daemon.inbox("Agent-1") / f"{first:012d}.md")
    assert (fields["from"], fields["to"], body) == ("Agent-2", "Agent-1", "hello\nsecond line")


def test_history_pages_with_cursor(daemon: Daemon):
    with daemon.client() as c:
        ids = c.batch([{"to": "Agent-1", "body": f"m{i}"} for i in range(25)])
        seen, cursor = [], None
        while True:
            page = c.history(agent="Agent-1", limit=10, cursor=cursor)
            seen += [m.id for m in page.messages]
            if page.cursor is None:
                break
            cursor = page.cursor
        assert seen == sorted(ids, reverse=True)
        with pytest.raises(CoordError) as e:
            c.history(limit=0)
        assert e.value.code == "bad_request"


def test_fifo_per_agent_with_8_concurrent_clients(daemon: Daemon):
    per_client, agents = 60, ["Agent-1", "Agent-2", "Agent-3", "Agent-4"]

    def client(n: int) -> None:
        with daemon.client() as c:
            for i in range(per_client):
                c.send(agents[i % 4], f"c{n}-{i}", sender=f"c{n}")

    concurrently(8, client)
    with daemon.client() as c:
        wait_until(lambda: all_done(c, 8 * per_client), what="all deliveries")
        for agent in agents:
            delivered = c.history(agent=agent, limit=1000).messages[::-1]  # oldest first
            times = [m.delivered for m in delivered]
            assert times == sorted(times), "delivered out of acceptance order"
    for k, agent in enumerate(agents):
        bodies = inbox_bodies(daemon.inbox(agent))
        assert len(bodies) == 2 * per_client
        for n in range(8):
            mine = [int(b.split("-")[1]) for b in bodies if b.startswith(f"c{n}-")]
            assert mine == [i for i in range(per_client) if i % 4 == k]


def test_urgent_before_regular(make_daemon):
    d = make_daemon(agents=[{"id": "A", "chunk": 1}], delivery=FAST_RETRY)
    block_inbox(d, "A")
    with d.client() as c:
        regular = [c.send("A", f"r{i}") for i in range(3)]
        wait_until(lambda: c.get(regular[0]).message.attempts >= 1, what="a failed attempt")
        urgent = [c.send("A", f"u{i}", priority="urgent") for i in range(2)]
        unblock_inbox(d, "A")
        wait_until(lambda: all_done(c, 5), what="deliveries")
        order = sorted(regular + urgent, key=lambda i: c.get(i).message.delivered)
    assert order == urgent + regular


def test_idempotency_key(daemon: Daemon):
    with daemon.client() as c:
        first = c.send("Agent-1", "once", key="k-1")
        assert c.send("Agent-1", "once", key="k-1") == first
        ids = c.batch(
            [
                {"to": "Agent-1", "body": "once", "key": "k-1"},
                {"to": "Agent-2", "body": "y", "key": "k-2"},
                {"to": "Agent-2", "body": "y", "key": "k-2"},
            ]
        )
        assert ids[0] == first and ids[1] == ids[2] != first
        b1 = c.broadcast("hi", key="b")
        assert c.broadcast("hi", key="b") == b1
        wait_until(lambda: all_done(c, 6), what="deliveries")
        assert c.status().rows == 6
    assert inbox_bodies(daemon.inbox("Agent-1")) == ["once", "hi"]


def test_pipelined_requests_on_one_connection(daemon: Daemon):
    from coordctl import protocol as p

    with daemon.client() as c:
        reqs = [p.Send(to=f"Agent-{1 + i % 4}", body=f"p{i}") for i in range(200)]
        reqs.insert(50, p.Send(to="nobody", body="x"))
        reqs.insert(100, p.Ping())
        replies = c.pipeline(reqs)
        assert isinstance(replies[50], p.Error) and replies[50].code == "unknown_agent"
        assert isinstance(replies[100], p.Pong)
        ids = [r.id for r in replies if isinstance(r, p.Sent)]
        assert len(ids) == 200 and ids == sorted(ids)  # acceptance order is request order


def test_a_handler_that_raises_is_reported_as_internal_and_everything_goes_on(make_daemon, monkeypatch):
    """A bug in a handler (injected by tests/faulty_coordd.py into the real daemon): the client gets `internal`,
    the log the traceback, and the same connection and the daemon go on serving."""
    from coordctl import protocol as p

    monkeypatch.setenv("COORDD_TEST_HANDLER_RAISES", "get")
    d = make_daemon()
    with d.client() as c:
        replies = c.pipeline(
            [
                p.Send(to="Agent-1", body="before"),
                p.Get(message_id=1),
                p.Ping(),
                p.Send(to="Agent-1", body="after", wait=True),
            ]
        )
        assert isinstance(replies[1], p.Error) and replies[1].code == "internal", replies[1]
        assert "test hook: the get handler fails" in replies[1].message and "log" in replies[1].message
        assert isinstance(replies[2], p.Pong) and isinstance(replies[3], p.Sent) and replies[3].status == "delivered"
        assert [m.body for m in c.history(agent="Agent-1").messages] == ["after", "before"]
    with d.client() as c:
        assert c.ping().version
    log = d.logtext()
    assert "Traceback (most recent call last)" in log and "RuntimeError: test hook: the get handler fails" in log
    figures.record(
        "hardening_internal_error",
        hardening="a handler raises an unexpected exception",
        outcome="`internal` + traceback in the log; connection serves on",
    )


def test_batch_is_validated_whole(daemon: Daemon):
    with daemon.client() as c:
        with pytest.raises(CoordError) as e:
            c.batch([{"to": "Agent-1", "body": "fine"}, {"to": "Agent-9", "body": "no such agent"}])
        assert e.value.code == "unknown_agent" and "messages[1]" in e.value.message
        with pytest.raises(CoordError) as e:
            c.batch([{"to": "Agent-1", "body": "fine"}, {"to": "Agent-1", "body": " \n"}])
        assert e.value.code == "bad_request"
        assert c.status().rows == 0


def test_wait_reports_failure(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], delivery={**FAST_RETRY, "max_attempts": 2})
    block_inbox(d, "A")
    with d.client() as c:
        with pytest.raises(CoordError) as e:
            c.send("A", "doomed", wait=True, timeout=10)
        assert e.value.code == "not_delivered" and "not a directory" in e.value.message.lower()
        failed = c.get(e.value.message_id)
        assert failed.message.status == "failed" and len(failed.attempts) == 2
        with pytest.raises(CoordError) as e2:
            c.cancel(failed.message.id)
        assert e2.value.code == "bad_state"
        unblock_inbox(d, "A")
        c.retry(failed.message.id)
        wait_until(lambda: c.get(failed.message.id).message.status == "delivered", what="retried delivery")
        with pytest.raises(CoordError) as e3:
            c.retry(failed.message.id)
        assert e3.value.code == "bad_state"


def test_cancel_queued(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], delivery=FAST_RETRY)
    block_inbox(d, "A")
    with d.client() as c:
        head, tail = c.send("A", "head"), c.send("A", "tail")
        wait_until(lambda: cancel_between_attempts(c, tail), what="tail cancelled between attempts")
        assert c.get(tail).message.status == "cancelled"
        unblock_inbox(d, "A")
        wait_until(lambda: c.get(head).message.status == "delivered", what="head delivered")
        with pytest.raises(CoordError) as e:
            c.cancel(12345)
        assert e.value.code == "unknown_message"
    assert inbox_bodies(d.inbox("A")) == ["head"]


def test_queue_limits(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], queue={"max_per_agent": 5, "max_total": 8}, delivery=FAST_RETRY)
    block_inbox(d, "A")
    block_inbox(d, "B")
    with d.client() as c:
        c.batch([{"to": "A", "body": str(i)} for i in range(5)])
        with pytest.raises(CoordError) as e:
            c.send("A", "one too many")
        assert e.value.code == "queue_full" and "max_per_agent" in e.value.message
        c.batch([{"to": "B", "body": str(i)} for i in range(3)])
        with pytest.raises(CoordError) as e:
            c.send("B", "over the total")
        assert e.value.code == "queue_full" and "max_total" in e.value.message
        assert c.status().rows == 8  # nothing stored for the refused ones
        unblock_inbox(d, "A")
        unblock_inbox(d, "B")
        wait_until(lambda: all_done(c, 8), what="deliveries")
        c.send("A", "room again")


def test_max_total_counts_the_configured_agents_queues_not_orphaned_ones(make_daemon):
    """Admission reads a running count of what every queue holds, orphaned ones too, and sums the configured
    agents' queues only when that count comes near queue.max_total: three messages orphaned by a reload fill
    the count, and the configured agents still get all of max_total, not one more."""
    limits, slow = {"max_per_agent": 10, "max_total": 8}, {"backoff_initial_ms": 60_000, "backoff_max_ms": 60_000}
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], queue=limits, delivery=slow)  # a failed try waits a minute
    block_inbox(d, "A")
    block_inbox(d, "B")
    with d.client() as c:
        c.batch([{"to": "B", "body": f"b{i}"} for i in range(3)])
        sections = {"daemon": {"socket": d.socket, "workspace": str(d.workspace)}, "store": {"path": d.db}}
        write_config(d.config, {**sections, "queue": limits, "delivery": slow}, [{"id": "A"}])
        c.reload()
        assert c.status().orphaned == 3
        c.batch([{"to": "A", "body": f"a{i}"} for i in range(8)])
        with pytest.raises(CoordError) as e:
            c.send("A", "one too many")
        assert e.value.code == "queue_full" and "max_total" in e.value.message


def test_queued_bodies_are_bounded_in_bytes_and_released_when_finished(make_daemon, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no tmux: Down's transport is down, its messages stay queued
    stuck = {"max_attempts": 1000, **FAST_RETRY}  # nothing fails for good while A's inbox is blocked
    d = make_daemon(
        agents=[{"id": "A"}, {"id": "Down", "transport": "tmux", "target": "nowhere:0.0"}],
        daemon={"max_frame_bytes": 65536},
        queue={"max_bytes": 100_000},
        delivery=stuck,
        start=False,
    )
    block_inbox(d, "A")
    d.start()
    big, small = "x" * 30_000, "a small one"
    with d.client() as c:
        first = [c.send("A", big), c.send("Down", big), c.send("Down", big)]
        assert (c.status().queued_bytes, c.status().max_queued_bytes) == (3 * sys.getsizeof(big), 100_000)
        with pytest.raises(CoordError) as e:
            c.send("A", big)
        assert e.value.code == "queue_full" and "queue.max_bytes" in e.value.message
        c.send("A", small)  # the bound is bytes, not a count: a small message still fits
        c.cancel(first[2])  # a cancelled message's body is let go: room for another big one
        c.send("A", big)
        with pytest.raises(CoordError) as e:
            c.batch([{"to": "A", "body": big}, {"to": "A", "body": small}])  # refused whole
        assert e.value.code == "queue_full"
        assert c.status().rows == 5 and c.status().queued_bytes == 3 * sys.getsizeof(big) + sys.getsizeof(small)
        unblock_inbox(d, "A")
        wait_until(lambda: all_done(c, 3), what="A's deliveries")
        assert c.status().queued_bytes == sys.getsizeof(big)  # Down's message, still queued
        assert c.batch([{"to": "A", "body": big}, {"to": "A", "body": big}])  # room again


def test_a_failed_message_lets_its_body_go_and_a_retry_takes_it_back(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], delivery={"max_attempts": 1, **FAST_RETRY})
    block_inbox(d, "A")
    with d.client() as c:
        mid = c.send("A", "fails at once")
        wait_until(lambda: c.get(mid).message.status == "failed", what="the message to fail")
        assert c.status().queued_bytes == 0
        unblock_inbox(d, "A")
        c.retry(mid)
        wait_until(lambda: c.get(mid).message.status == "delivered", what="the retried message delivered")
        assert c.status().queued_bytes == 0


def test_sigkill_with_queued_messages_then_restart(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], delivery=FAST_RETRY)
    block_inbox(d, "A")
    block_inbox(d, "B")
    with d.client() as c:
        ids = c.batch([{"to": "AB"[i % 2], "body": f"m{i}"} for i in range(40)])
        ids.append(c.send("A", "last", priority="urgent"))
    d.kill()
    unblock_inbox(d, "A")
    unblock_inbox(d, "B")
    d.start()
    with d.client() as c:
        wait_until(lambda: all_done(c, 41), what="every queued message delivered after restart")
    bodies = inbox_bodies(d.inbox("A")) + inbox_bodies(d.inbox("B"))
    assert sorted(bodies) == sorted([f"m{i}" for i in range(40)] + ["last"])


def test_sigterm_exits_cleanly_and_keeps_everything(daemon: Daemon):
    with daemon.client() as c:
        ids = c.batch([{"to": "Agent-1", "body": f"m{i}"} for i in range(500)])
    assert daemon.stop() == 0
    assert not os.path.exists(daemon.socket)
    daemon.start()
    with daemon.client() as c:
        wait_until(lambda: all_done(c, 500), what="deliveries")
        assert c.get(ids[-1]).message.status == "delivered"
    assert len(inbox_bodies(daemon.inbox("Agent-1"))) == 500


def test_retention_by_count(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], retention={"max_messages": 50, "prune_interval_s": 60, "prune_chunk": 7})
    with d.client() as c:
        for _ in range(4):
            c.batch([{"to": "A", "body": f"m{i}"} for i in range(60)])
        wait_until(lambda: c.status().queued == 0, what="deliveries")
        c.send("A", "one more, to trigger a pass", wait=True)
        wait_until(lambda: c.status().rows <= 50, what="pruning down to max_messages")
        newest = c.history(limit=1000).messages
        assert len(newest) <= 50 and newest[0].body == "one more, to trigger a pass"
        assert min(m.id for m in newest) > 190  # the oldest went first


def test_retention_by_age_never_prunes_queued(make_daemon):
    d = make_daemon(
        agents=[{"id": "A"}, {"id": "B"}],
        delivery={**FAST_RETRY, "max_attempts": 10_000},
        retention={"max_age_days": 0.5 / 86400, "prune_interval_s": 0.2},
    )
    block_inbox(d, "B")
    with d.client() as c:
        c.batch([{"to": "A", "body": "old"} for _ in range(20)])
        stuck = c.send("B", "queued, never pruned")
        wait_until(lambda: c.status().rows == 1, what="aged messages pruned")
        assert c.get(stuck).message.status == "queued"


def test_bad_input_gets_typed_errors_and_the_daemon_keeps_serving(daemon: Daemon):
    import socket

    from coordctl import protocol as p

    def raw(payload: bytes) -> tuple[p.Reply | None, bytes]:
        s = socket.socket(socket.AF_UNIX)
        s.connect(daemon.socket)
        s.sendall(payload)
        head = s.recv(4, socket.MSG_WAITALL)
        rep = p.reply_decoder.decode(s.recv(int.from_bytes(head, "big"), socket.MSG_WAITALL))
        rest = s.recv(16)  # b"" when the daemon closed the connection
        s.close()
        return rep, rest

    def framed(obj) -> bytes:
        body = p.encoder.encode(obj)
        return len(body).to_bytes(4, "big") + body

    cases = {
        "malformed": b"\x00\x00\x00\x03\xc1\xc1\xc1",
        "not a map": framed([1, 2, 3]),
        "unknown method": framed({"op": "explode", "rid": 7}),
        "wrong type": framed({"op": "send", "rid": 8, "to": 5, "body": "x"}),
        "unknown field": framed({"op": "ping", "rid": 9, "extra": 1}),
    }
    for name, payload in cases.items():
        s = socket.socket(socket.AF_UNIX)
        s.connect(daemon.socket)
        s.sendall(payload + framed({"op": "ping", "rid": 99}))
        replies = []
        for _ in range(2):
            head = s.recv(4, socket.MSG_WAITALL)
            replies.append(p.reply_decoder.decode(s.recv(int.from_bytes(head, "big"), socket.MSG_WAITALL)))
        s.close()
        assert isinstance(replies[0], p.Error) and replies[0].code == "bad_request", name
        assert isinstance(replies[1], p.Pong), f"{name}: connection not served after the error"

    rep, rest = raw((2 << 20).to_bytes(4, "big") + b"x" * 100)
    assert rep.code == "too_large" and "max_frame_bytes" in rep.message and rest == b""

    with daemon.client() as c:
        for to, body, code in [("Nobody", "x", "unknown_agent"), ("Agent-1", "", "bad_request")]:
            with pytest.raises(CoordError) as e:
                c.send(to, body)
            assert e.value.code == code and e.value.message
        with pytest.raises(CoordError) as e:
            c.get(999)
        assert e.value.code == "unknown_message"
        assert c.ping().protocol == PROTOCOL_VERSION


def test_socket_and_directory_modes(daemon: Daemon):
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(daemon.socket)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(daemon.db).st_mode) == 0o600


def test_second_daemon_on_the_same_socket_is_refused(daemon: Daemon):
    second = Daemon(daemon.tmp, daemon.agents)
    second.log = daemon.tmp / "second.log"
    second.start(expect_ready=False)
    assert second.proc.wait(20) != 0
    assert "already serving" in second.logtext()
    with daemon.client() as c:
        assert c.ping().protocol == PROTOCOL_VERSION


def test_stale_socket_is_replaced(daemon: Daemon):
    daemon.kill()
    assert os.path.exists(daemon.socket)  # left behind by the dead daemon
    daemon.start()
    with daemon.client() as c:
        assert c.ping()


def test_bad_config_names_the_key(tmp_path):
    import subprocess
    import sys

    from conftest import write_config

    cases = [
        ({"daemon": {"sockett": "/x"}}, [{"id": "A"}], "sockett"),
        ({"retention": {"max_messages": -1}}, [{"id": "A"}], "retention.max_messages"),
        ({}, [{"id": "A", "inbox": "/x"}], "inbox"),
        ({}, [{"id": "-A"}], "agents[0].id"),
        ({}, [{"id": "A", "transport": "carrier-pigeon"}], "transport"),
    ]
    for sections, agents, key in cases:
        path = write_config(tmp_path / "bad.toml", sections, agents)
        out = subprocess.run(
            [sys.executable, "-m", "coordd", "check-config", str(path)], capture_output=True, text=True
        )
        assert out.returncode != 0 and key in out.stderr, out.stderr


def test_embedded_default_serves_eight_agents_at_the_xdg_socket(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(run),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    env.pop("COORDD_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "coordd", "run"], env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        sock = str(run / "coordd" / "coordd.sock")

        def agents():
            try:
                with Client(sock) as c:
                    return c.agents()
            except CoordError:
                return None

        listed = wait_until(agents, 20, "the default daemon")
        assert [a.id for a in listed] == [f"Agent-{n}" for n in range(1, 9)]
        assert {a.transport for a in listed} == {"inbox"}
        os.environ["COORDD_SOCKET"] = sock
        try:
            with Client() as c:  # COORDD_SOCKET picks the socket
                c.send("Agent-8", "via the environment", wait=True)
        finally:
            del os.environ["COORDD_SOCKET"]
        assert (tmp_path / "data" / "coordd" / "agent_workspaces" / "Agent-8" / "inbox").is_dir()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


async def test_async_client_many_in_flight(daemon: Daemon):
    import asyncio

    from coordctl import AsyncClient

    async with AsyncClient(daemon.socket) as c:
        ids = await asyncio.gather(*(c.send(f"Agent-{1 + i % 4}", f"a{i}") for i in range(100)))
        assert len(set(ids)) == 100
        assert (await c.ping()).protocol == PROTOCOL_VERSION
        with pytest.raises(CoordError) as e:
            await c.send("Agent-9", "x")
        assert e.value.code == "unknown_agent"
        await c.send("Agent-1", "last", wait=True)
        assert (await c.get(ids[0])).message.id == ids[0]


def test_other_uid_is_refused():
    import pwd
    import shutil
    import tempfile
    from pathlib import Path

    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    tmp = Path(tempfile.mkdtemp(prefix="coordd-uid-"))  # pytest's tmp_path is 0700: nobody could not reach it
    tmp.chmod(0o755)
    daemon = Daemon(tmp).start()
    try:
        # Open the directory and socket up so that only SO_PEERCRED stands in the way.
        os.chmod(os.path.dirname(daemon.socket), 0o755)
        os.chmod(daemon.socket, 0o666)
        nobody = pwd.getpwnam("nobody")
        reply = _ping_as(daemon.socket, nobody.pw_uid, nobody.pw_gid)
        assert reply.startswith(f"forbidden uid {nobody.pw_uid}"), reply
        with daemon.client() as c:
            assert c.ping()
    finally:
        daemon.kill()
        shutil.rmtree(tmp)


def _ping_as(path: str, uid: int, gid: int) -> str:
    """Fork, become uid/gid, ping the daemon; return the reply's code and message (or the exception)."""
    import socket

    from coordctl import protocol as p

    def ping() -> str:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        try:
            s.sendall(p.frame(p.Ping(rid=1)))
        except BrokenPipeError:
            pass  # the daemon refuses at once, before reading: its error is waiting to be read
        head = s.recv(4, socket.MSG_WAITALL)
        rep = p.reply_decoder.decode(s.recv(int.from_bytes(head, "big"), socket.MSG_WAITALL))
        return f"{rep.code} {rep.message}" if isinstance(rep, p.Error) else repr(rep)

    return run_as(uid, gid, ping)


def test_db_file_stops_growing_under_steady_load(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], retention={"max_messages": 300, "prune_chunk": 100})
    sizes, wal = [], 0
    with d.client() as c:
        for round_ in range(12):
            c.batch([{"to": "A", "body": f"round {round_} message {i} " + "x" * 200} for i in range(300)])
            wait_until(lambda: c.status().queued == 0, what="deliveries")
            c.send("A", "flush", wait=True)
            wait_until(lambda: c.status().rows <= 300, what="pruning")
            sizes.append(os.path.getsize(d.db))
            wal = max(wal, os.path.getsize(d.db + "-wal"))
    # Pruned rows' pages are reused: the database file stops growing. The WAL's size at a given moment depends
    # on when the last checkpoint ran (off the loop, so it races the sends); it is bounded, not steady.
    assert max(sizes[6:]) <= max(sizes[:6]) * 1.1, sizes
    assert wal <= 64 << 20, wal  # journal_size_limit


def test_at_the_count_bound_pruning_runs_once_per_chunk_of_sends(make_daemon):
    """Pruned exactly to the bound, every send at the bound set off a pass deleting one row in a transaction of
    its own: 300 passes for 300 sends, each send 5-10 times slower."""
    d = make_daemon(agents=[{"id": "A"}], retention={"max_messages": 200, "prune_chunk": 50})
    with d.client() as c:
        c.batch([{"to": "A", "body": f"fill {i}"} for i in range(200)])
        wait_until(lambda: c.status().queued == 0, what="deliveries")
        for i in range(300):
            c.send("A", f"at the bound {i}", wait=True)
        wait_until(lambda: c.status().rows <= 200, what="the last pass")
        rows = c.status().rows
    passes = d.logtext().count("pruned ")
    assert 300 // 20 <= passes <= 300 // 20 + 2, passes  # a pass per 20 sends (a tenth of the bound)
    assert 180 <= rows <= 200
