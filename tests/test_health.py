"""Health from reality: a fault of the environment holds messages, it does not fail them.

Every fault is real: a tmux server that is not started yet, an inbox on a small
tmpfs filled to the last byte, a read-only remount. What must hold: the agent
shows `down` with the reason and since when, its messages stay queued with no
attempt spent, and once the cause is gone they go out by themselves, in order,
each once, none `failed`; a reload tries again at once. A watch sees one
`delivering` per real attempt and one `held` per waiting message; LAST ERROR
clears after a delivery that gets through (history keeps the attempts' errors).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess

import pytest
from conftest import inbox_bodies, read_inbox_file, tmpfs, wait_until
from test_watch import Collector, block_inbox

from coordctl import protocol
from coordctl.events import event_line

# max_attempts 2 with a short backoff: a fault that spent attempts would end `failed` within a second.
FAST = {"max_attempts": 2, "backoff_initial_ms": 20, "backoff_max_ms": 40}
RECHECK = {"unhealthy_recheck_ms": 50, "unhealthy_recheck_max_ms": 200}
READY = {"idle_prompt": "^> ?$"}  # paste only once the reader shows its prompt (input before it is flushed)


def agent_status(c, agent: str) -> protocol.AgentStatus:
    return next(a for a in c.status().agents if a.id == agent)


def down(c, agent: str) -> protocol.AgentStatus | None:
    a = agent_status(c, agent)
    return None if a.healthy else a


@pytest.fixture
def tmux_server():
    if shutil.which("tmux") is None:
        pytest.skip("needs tmux (Debian: tmux; `make deps` installs it)")
    from tmux_fixtures import TmuxServer

    server = TmuxServer()
    yield server
    server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


def test_tmux_agents_configured_before_their_server_get_every_message(make_daemon, tmux_server, tmp_path):
    from tmux_fixtures import records

    server = tmux_server  # its socket path is chosen; no server runs on it yet
    agents = [
        {"id": f"T{n}", "transport": "tmux", "target": f"t{n}:0.0", "header": "", **server.agent_keys(), **READY}
        for n in (1, 2)
    ]
    d = make_daemon(agents=agents, delivery={**FAST, **RECHECK})
    with d.client() as c:
        ids = {a: [c.send(a, f"{a} message {i}") for i in range(5)] for a in ("T1", "T2")}
        for a in ("T1", "T2"):
            st = wait_until(lambda a=a: down(c, a), 10, f"{a} down")
            assert "not reachable" in (st.reason or "") and st.down_since is not None
        assert c.status().agents[0].last_error is None  # no attempt was made, so none failed
        assert all(c.get(i).message.attempts == 0 for agent_ids in ids.values() for i in agent_ids)
        out = {a: tmp_path / f"{a}.jsonl" for a in ("T1", "T2")}
        server.reader("t1", out["T1"])  # the server starts with the first session; t2 comes later
        wait_until(lambda: len(records(out["T1"])) == 5, 20, "T1's messages once its pane is up")
        st = down(c, "T2")
        assert st is not None and "not found" in (st.reason or "")  # the server runs now; T2's pane does not
        server.reader("t2", out["T2"])
        wait_until(lambda: len(records(out["T2"])) == 5, 20, "T2's messages once its pane is up")
        every = [i for agent_ids in ids.values() for i in agent_ids]
        wait_until(lambda: all(c.get(i).message.status == "delivered" for i in every), 10, "the outcomes stored")
        for a, agent_ids in ids.items():
            assert [(c.get(i).message.status, c.get(i).message.attempts) for i in agent_ids] == [("delivered", 1)] * 5
            st = agent_status(c, a)
            assert st.healthy and st.down_since is None and st.failed == 0
    for a in ("T1", "T2"):
        assert [r["text"] for r in records(out[a])] == [f"{a} message {i}" for i in range(5)]


def fill(fs) -> None:
    """Write to fs until it is full (ENOSPC), in a file `filler`."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


def test_inbox_on_a_full_filesystem_holds_then_delivers(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], delivery={**FAST, **RECHECK})
    d.inbox("A").mkdir(parents=True)
    with tmpfs(d.inbox("A"), "size=256k,mode=0700"):
        fill(d.inbox("A"))
        watcher = Collector(d.socket, agents=["A"])
        try:
            with d.client() as c:
                ids = [c.send("A", f"message {i}") for i in range(5)]
                c.send("B", "B is fine", wait=True, timeout=10)
                st = wait_until(lambda: down(c, "A"), 10, "A down")
                assert "No space left on device" in (st.reason or "") and st.down_since is not None
                wait_until(lambda: sum(e.event == "held" for e in watcher.events()) == 5, 10, "a held event each")
                assert all(c.get(i).message.attempts == 0 for i in ids)
                os.unlink(d.inbox("A") / "filler")
                wait_until(lambda: all(c.get(i).message.status == "delivered" for i in ids), 10, "A's messages")
                assert [(c.get(i).message.status, c.get(i).message.attempts) for i in ids] == [("delivered", 1)] * 5
                st = agent_status(c, "A")
                assert st.healthy and st.reason is None and st.down_since is None and st.failed == 0
                wait_until(lambda: sum(e.event == "delivered" for e in watcher.events()) == 5, 10, "delivered events")
            events = watcher.events()
        finally:
            watcher.stop()
        assert inbox_bodies(d.inbox("A")) == [f"message {i}" for i in range(5)]
    for i in ids:
        mine = [e for e in events if e.id == i]
        assert [e.event for e in mine].count("delivering") == 1, mine  # one attempt, announced once
        held = [e for e in mine if e.event == "held"]
        assert len(held) == 1 and "No space left on device" in (held[0].reason or ""), mine  # not one per recheck
        assert "waits, no attempt counted: " in event_line(held[0])  # as `coordctl watch` prints it
        assert mine[-1].event == "delivered"


def test_an_inbox_directory_it_may_not_write_holds_then_delivers(make_daemon):
    """Permission denied, real for root too: an immutable directory (chattr +i) refuses new files with EPERM."""
    d = make_daemon(agents=[{"id": "A"}], delivery={**FAST, **RECHECK})
    d.inbox("A").mkdir(parents=True)
    if subprocess.run(["chattr", "+i", str(d.inbox("A"))], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here (needs root and a file system with the immutable flag)")
    try:
        with d.client() as c:
            ids = [c.send("A", f"message {i}") for i in range(3)]
            st = wait_until(lambda: down(c, "A"), 10, "A down")
            assert "Operation not permitted" in (st.reason or "")
            assert all(c.get(i).message.attempts == 0 for i in ids)
            subprocess.run(["chattr", "-i", str(d.inbox("A"))], check=True)
            wait_until(lambda: all(c.get(i).message.status == "delivered" for i in ids), 10, "A's messages")
    finally:
        subprocess.run(["chattr", "-i", str(d.inbox("A"))], check=False)
    assert inbox_bodies(d.inbox("A")) == [f"message {i}" for i in range(3)]


def test_out_of_file_descriptors_holds_then_delivers(make_daemon):
    """EMFILE, real: the daemon's fd limit lowered (prlimit) to the fds it has open. The connections are open
    already, so they keep being served (`status` is not: its query needs a temp file; the watch tells)."""
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux)")
    d = make_daemon(agents=[{"id": "A"}], delivery={**FAST, **RECHECK})
    pid = str(d.proc.pid)
    watcher = Collector(d.socket, agents=["A"], events=["held"])
    try:
        with d.client() as c:
            c.send("A", "before", wait=True, timeout=10)
            limit = subprocess.run(
                ["prlimit", "--pid", pid, "--nofile", "--raw", "--noheadings", "--output", "SOFT,HARD"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            low = len(os.listdir(f"/proc/{pid}/fd"))
            subprocess.run(["prlimit", "--pid", pid, f"--nofile={low}:{limit[1]}"], check=True)
            try:
                mid = c.send("A", "once there are fds")
                held = wait_until(watcher.events, 10, "a held event")
                assert [e.id for e in held] == [mid] and "Too many open files" in (held[0].reason or "")
                assert c.get(mid).message.attempts == 0
            finally:
                subprocess.run(["prlimit", "--pid", pid, f"--nofile={limit[0]}:{limit[1]}"], check=True)
            wait_until(lambda: c.get(mid).message.status == "delivered", 10, "the delivery once fds are free")
            assert agent_status(c, "A").healthy and c.get(mid).message.attempts == 1
    finally:
        watcher.stop()
    assert inbox_bodies(d.inbox("A")) == ["before", "once there are fds"]


def test_a_reload_tries_a_down_agent_at_once(make_daemon):
    slow = {**FAST, "unhealthy_recheck_ms": 600_000, "unhealthy_recheck_max_ms": 600_000}  # no recheck but the reload's
    d = make_daemon(agents=[{"id": "A"}], delivery=slow)
    d.inbox("A").mkdir(parents=True)
    with tmpfs(d.inbox("A"), "ro,size=1m"):
        with d.client() as c:
            mid = c.send("A", "after the remount")
            st = wait_until(lambda: down(c, "A"), 10, "A down")
            assert "Read-only file system" in (st.reason or "")
            subprocess.run(["mount", "-o", "remount,rw", str(d.inbox("A"))], check=True)
            c.reload()
            wait_until(lambda: c.get(mid).message.status == "delivered", 10, "delivery right after the reload")
            assert c.get(mid).message.attempts == 1
        assert inbox_bodies(d.inbox("A")) == ["after the remount"]


def test_last_error_clears_after_a_success_history_keeps_it(make_daemon):
    d = make_daemon(
        agents=[{"id": "A"}], delivery={"max_attempts": 10_000, "backoff_initial_ms": 20, "backoff_max_ms": 40}
    )
    block_inbox(d, "A")  # a file in the way of the inbox: that fails attempts (it is not a `down`)
    with d.client() as c:
        mid = c.send("A", "once unblocked")
        wait_until(lambda: c.get(mid).message.attempts >= 2, 10, "failed attempts")
        assert "not a directory" in (agent_status(c, "A").last_error or "")
        os.unlink(d.inbox("A"))
        wait_until(lambda: c.get(mid).message.status == "delivered", 10, "the delivery")
        assert agent_status(c, "A").last_error is None
        attempts = c.get(mid).attempts
    assert attempts[-1].ok and all("not a directory" in (a.error or "") for a in attempts[:-1])


def test_one_delivering_event_per_attempt_behind_a_backoff(make_daemon):
    """Messages waiting behind one whose attempts fail (in the same batch each time) are announced once per attempt:
    not at each retry of the one ahead of them."""
    d = make_daemon(agents=[{"id": "A"}], delivery={"max_attempts": 3, "backoff_initial_ms": 20, "backoff_max_ms": 40})
    block_inbox(d, "A")
    watcher = Collector(d.socket, agents=["A"])
    try:
        with d.client() as c:
            ids = c.batch([{"to": "A", "body": f"doomed {i}"} for i in range(3)])
            wait_until(lambda: all(c.get(i).message.status == "failed" for i in ids), 20, "every message to fail")
            attempts = {i: c.get(i).message.attempts for i in ids}
            wait_until(lambda: sum(e.event == "failed" for e in watcher.events()) == 3, 10, "the failed events")
        events = watcher.events()
    finally:
        watcher.stop()
    for i in ids:
        announced = [e.attempt for e in events if e.id == i and e.event == "delivering"]
        assert announced == list(range(1, attempts[i] + 1)) == [1, 2, 3], (i, announced)


def test_a_message_without_a_kind_reads_message_everywhere(make_daemon):
    """Inbox files said `kind: message` where `show` said `kind: -`: every view now says `message`."""
    from test_cli import cli

    d = make_daemon(agents=[{"id": "A"}])
    with d.client() as c:
        plain = c.send("A", "no kind given", wait=True, timeout=10)
        review = c.send("A", "a review", kind="review", wait=True, timeout=10)
        assert [c.get(i).message.kind for i in (plain, review)] == ["message", "review"]
        assert [m.kind for m in c.history(agent="A").messages] == ["review", "message"]
    fields, _ = read_inbox_file(d.inbox("A") / f"{plain:012d}.md")
    assert fields["kind"] == "message"
    shown = cli(d, "show", str(plain)).stdout
    assert re.search(r"^kind: +message$", shown, re.M), shown
    as_json = json.loads(cli(d, "--json", "show", str(plain)).stdout)
    assert as_json["message"]["kind"] == "message"
