"""Transport faults: an unwritable inbox, a killed tmux pane, a killed X server.

Each fault is real: a regular file where the inbox directory should be, or a
read-only tmpfs mounted on it (root is not stopped by chmod); a tmux session
killed on a private tmux server; an Xvfb killed with SIGKILL. What must hold:
a fault tied to the message (a file in the way of the inbox) retries with
backoff and ends `failed` with the reason once delivery.max_attempts is used up;
a fault of the environment (a read-only inbox, a missing pane, no display) marks
the agent `down` with the reason and spends no attempt; the other agents keep
flowing meanwhile; and once the transport is back its queue goes out, in order,
each message once.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import Daemon, inbox_bodies, tmpfs, wait_until
from figures import record

from coordctl import Client

# A pane that is being recreated has no program reading it yet, and what is pasted then is lost when the
# program starts (it flushes its input): wait for the reader's prompt, as a real setup would.
READY = {"idle_prompt": "^> ?$"}
BACKOFF = {"backoff_initial_ms": 40, "backoff_max_ms": 160, "unhealthy_recheck_ms": 50}


def block_inbox(d: Daemon, agent: str) -> None:
    """A regular file where the inbox directory should be (the directory, if any, moved aside)."""
    path = d.inbox(agent)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        path.rename(path.with_name("inbox.aside"))
    path.write_text("not a directory")


def unblock_inbox(d: Daemon, agent: str) -> None:
    path = d.inbox(agent)
    path.unlink()
    if path.with_name("inbox.aside").is_dir():
        path.with_name("inbox.aside").rename(path)


def delivered(c: Client, agent: str) -> int:
    return next(a.delivered for a in c.status().agents if a.id == agent)


def test_unwritable_inbox_backs_off_then_fails_with_the_reason(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], delivery={**BACKOFF, "max_attempts": 4})
    block_inbox(d, "A")
    with d.client() as c:
        lost = c.send("A", "into a wall")
        for i in range(20):  # B is not held up by A's trouble
            c.send("B", f"b{i}", wait=True, timeout=10)
        wait_until(lambda: c.get(lost).message.status == "failed", 10, "the message to fail")
        msg = c.get(lost)
    assert "exists but is not a directory" in msg.message.error
    assert [a.ok for a in msg.attempts] == [False] * 4
    gaps = [b.started - a.finished for a, b in zip(msg.attempts, msg.attempts[1:], strict=False)]
    for n, gap in enumerate(gaps):  # 40, 80, 160 ms: doubling, capped at backoff_max_ms
        assert gap >= min(40 * 2**n, 160) / 1000 * 0.9, gaps
    assert inbox_bodies(d.inbox("B")) == [f"b{i}" for i in range(20)]
    record("fault_inbox_blocked", faults=1, failed_with_reason=1, others_delivered=20)


def test_inbox_back_resumes_its_queue_in_order(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], delivery={**BACKOFF, "max_attempts": 10_000})
    block_inbox(d, "A")
    with d.client() as c:
        ids = [c.send("A", f"a{i}", priority="urgent" if i == 7 else "regular") for i in range(30)]
        c.send("B", "meanwhile", wait=True, timeout=10)
        wait_until(lambda: c.get(ids[7]).message.attempts >= 3, 10, "a few failed attempts (urgent first)")
        assert all(c.get(i).message.status == "queued" for i in ids)
        unblock_inbox(d, "A")
        wait_until(lambda: delivered(c, "A") == 30, 10, "A's queue to go out")
        order = sorted(ids, key=lambda i: (c.get(i).message.delivered, i))
    # Urgent first, then the rest in the order sent; one file each.
    assert order == [ids[7]] + [i for n, i in enumerate(ids) if n != 7]
    assert sorted(inbox_bodies(d.inbox("A"))) == sorted(f"a{i}" for i in range(30))
    record("fault_inbox_recovered", faults=1, delivered_after=30, lost=0)


def test_an_inbox_deleted_or_replaced_between_deliveries_gets_the_next_message(make_daemon):
    # The transport keeps the directory open between deliveries: it must notice that the path now names
    # another directory (or none), or the next message would land in one nobody can see.
    d = make_daemon(agents=[{"id": "A"}])
    inbox = d.inbox("A")
    with d.client() as c:
        c.send("A", "first", wait=True, timeout=10)
        shutil.rmtree(inbox)
        c.send("A", "after the inbox was deleted", wait=True, timeout=10)
        assert inbox_bodies(inbox) == ["after the inbox was deleted"]
        inbox.rename(inbox.with_name("inbox.old"))
        inbox.mkdir()
        c.send("A", "into the new one", wait=True, timeout=10)
    assert inbox_bodies(inbox) == ["into the new one"]
    assert inbox_bodies(inbox.with_name("inbox.old")) == ["after the inbox was deleted"]


@pytest.fixture
def read_only_inbox(make_daemon, tmp_path):
    """A daemon whose agent A's inbox is a read-only tmpfs (root writes through chmod, not through ro)."""
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], delivery={**BACKOFF, "max_attempts": 10_000})
    d.inbox("A").mkdir(parents=True)
    with tmpfs(d.inbox("A"), "ro,size=1m"):
        yield d


def test_read_only_inbox_reports_why_and_resumes_when_writable(read_only_inbox):
    d = read_only_inbox
    with d.client() as c:
        first = c.send("A", "one")
        c.send("A", "two")
        c.send("B", "B is fine", wait=True, timeout=10)
        # A read-only file system says nothing about the message: A is down with the reason, no attempt spent.
        a = wait_until(
            lambda: next((a for a in c.status().agents if a.id == "A" and not a.healthy), None), 10, "A down"
        )
        assert "Read-only file system" in (a.reason or "") and a.down_since is not None
        msg = c.get(first)
        assert msg.message.status == "queued" and msg.message.attempts == 0
        subprocess.run(["mount", "-o", "remount,rw", str(d.inbox("A"))], check=True)
        wait_until(lambda: delivered(c, "A") == 2, 10, "A's queue after the remount")
    assert inbox_bodies(d.inbox("A")) == ["one", "two"]
    record("fault_inbox_read_only", faults=1, lost=0)


# --- tmux ---------------------------------------------------------------------------------------


@pytest.fixture
def tmux(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("needs tmux (Debian: tmux; `make deps` installs it)")
    from tmux_fixtures import TmuxServer

    server = TmuxServer()
    try:
        yield server
    finally:
        server.kill()


def test_tmux_pane_killed_queue_waits_then_resumes_in_order(make_daemon, tmux, tmp_path):
    from tmux_fixtures import records

    out = tmp_path / "t.jsonl"
    tmux.session("keep", "sleep", "600")  # the server outlives the agent's session
    tmux.reader("t", out)
    agent = {"id": "T", "transport": "tmux", "target": "t:0.0", "header": "", **tmux.agent_keys(), **READY}
    d = make_daemon(agents=[agent, {"id": "B"}], delivery={**BACKOFF, "max_attempts": 10_000})
    with d.client() as c:
        c.send("T", "before", wait=True, timeout=10)
        tmux.tmux("kill-session", "-t", "=t")
        queued = [c.send("T", f"while gone {i}") for i in range(10)]
        for i in range(10):
            c.send("B", f"b{i}", wait=True, timeout=10)
        # A missing pane says nothing about the message: T is down with the reason, no attempt spent.
        t = wait_until(
            lambda: next((a for a in c.status().agents if a.id == "T" and not a.healthy), None), 10, "T down"
        )
        assert "not found" in (t.reason or "")
        assert c.get(queued[0]).message.attempts == 0
        assert c.get(queued[-1]).message.status == "queued"
        tmux.reader("t", out)  # the agent's pane is back
        wait_until(lambda: delivered(c, "T") == 11, 20, "T's queue after the pane came back")
    assert [r["text"] for r in records(out)] == ["before"] + [f"while gone {i}" for i in range(10)]
    assert inbox_bodies(d.inbox("B")) == [f"b{i}" for i in range(10)]
    record("fault_tmux_pane_killed", faults=1, lost=0, delivered_after=10)


# --- every transport at once, X included ---------------------------------------------------------------

WINDOW = (40, 40)  # where the xterm goes; the daemon clicks its middle (an 80x20 xterm is 484x264 px)


def test_all_transports_faulted_at_once_then_recovered(make_daemon, tmux, tmp_path, monkeypatch):
    """Inbox blocked, tmux pane killed and X server killed together; a healthy inbox agent flows throughout."""
    from tmux_fixtures import records
    from x11 import XServer, require_tools

    require_tools()
    auth = tmp_path / "xauthority"
    auth.touch()
    monkeypatch.setenv("XAUTHORITY", str(auth))  # python-xlib refuses to connect without an authority file
    x = XServer(tmp_path).start()
    try:
        monkeypatch.setenv("DISPLAY", x.display)
        gui_out, tmux_out = tmp_path / "gui.txt", tmp_path / "tmux.jsonl"
        gui_out.touch()
        x.xterm("gui-agent", *WINDOW, gui_out)
        tmux.session("keep", "sleep", "600")
        tmux.reader("t", tmux_out)
        agents = [
            {"id": "I", "transport": "inbox"},
            {"id": "T", "transport": "tmux", "target": "t:0.0", "header": "", **tmux.agent_keys(), **READY},
            {"id": "G", "transport": "gui", "x": WINDOW[0] + 242, "y": WINDOW[1] + 132, "paste_hotkey": "ctrl+shift+v"},
            {"id": "H", "transport": "inbox"},
        ]
        d = make_daemon(agents=agents, gui={"header": ""}, delivery={**BACKOFF, "max_attempts": 10_000})
        with d.client() as c:
            for a in "ITG":
                c.send(a, f"{a} before", wait=True, timeout=20)
            block_inbox(d, "I")
            tmux.tmux("kill-session", "-t", "=t")
            x.kill()
            for i in range(5):
                for a in "ITG":
                    c.send(a, f"{a} during {i}")
            for i in range(20):
                c.send("H", f"h{i}", wait=True, timeout=10)
            wait_until(lambda: not next(a for a in c.status().agents if a.id == "G").healthy, 10, "G down")
            assert sum(a.failed for a in c.status().agents) == 0
            unblock_inbox(d, "I")
            tmux.reader("t", tmux_out)
            x.start()
            x.xterm("gui-agent-2", *WINDOW, gui_out)
            wait_until(lambda: sum(a.delivered for a in c.status().agents) == 3 + 15 + 20, 40, "every queue drained")
    finally:
        x.stop()
    expected = {a: [f"{a} before"] + [f"{a} during {i}" for i in range(5)] for a in "ITG"}
    assert inbox_bodies(d.inbox("I")) == expected["I"]
    assert [r["text"] for r in records(tmux_out)] == expected["T"]
    assert [line for line in gui_out.read_text().split("\n") if line] == expected["G"]
    assert inbox_bodies(d.inbox("H")) == [f"h{i}" for i in range(20)]
    record("fault_all_transports", faults=3, lost=0, others_delivered=20)
