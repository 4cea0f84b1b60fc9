"""`coordctl status` for people and scripts: the table, latency percentiles, and exit codes 0 / 4."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from conftest import wait_until


def status(d, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COORDD_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "coordctl", "--socket", d.socket, *args, "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def block_inbox(d, agent: str) -> None:
    d.inbox(agent).parent.mkdir(parents=True, exist_ok=True)
    d.inbox(agent).write_text("a file where the inbox directory should be: every delivery fails")


def test_all_well_exits_0_with_latency_percentiles(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B", "groups": ["g"]}], metrics={"listen": "127.0.0.1:0"})
    before = status(d, "--json")
    assert before.returncode == 0
    assert [(a["latency_p50"], a["latency_p99"]) for a in json.loads(before.stdout)["agents"]] == [(None, None)] * 2
    with d.client() as c:
        for i in range(20):
            c.send("A", f"m{i}", wait=True)
    shown = status(d)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("coordd ") and f"pid {d.proc.pid}" in lines[0] and d.socket in lines[0]
    assert lines[1].startswith(f"store {d.db}") and "20 rows" in lines[1] and "retention" in lines[1]
    assert "metrics http://127.0.0.1:" in shown.stdout and "attention" not in shown.stdout
    header = next(line for line in lines if line.startswith("AGENT"))
    assert header.split() == [
        "AGENT",
        "TRANSPORT",
        "HEALTH",
        "QUEUED",
        "IN",
        "FLIGHT",
        "DELIVERED",
        "FAILED",
        "P50",
        "P99",
        "OLDEST",
        "FILES",
        "LAST",
        "ERROR",
    ]
    row_a = next(line for line in lines if line.startswith("A ")).split()
    assert row_a[:7] == ["A", "inbox", "ok", "0", "0", "20", "0"]
    assert row_a[7].endswith(("us", "ms")) and row_a[8].endswith(("us", "ms"))
    assert next(line for line in lines if line.startswith("B ")).split()[7:9] == ["-", "-"]
    data = json.loads(status(d, "--json").stdout)
    a = data["agents"][0]
    assert 0 < a["latency_p50"] <= a["latency_p99"] < 30 and a["delivered"] == 20 and a["healthy"]
    assert data["metrics_url"].startswith("http://127.0.0.1:") and data["watchers"] == 0


def test_failed_messages_exit_4_until_retried(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], delivery={"max_attempts": 1}, start=False)
    block_inbox(d, "A")
    d.start()
    with d.client() as c:
        doomed = c.send("A", "cannot be written")
        wait_until(lambda: c.get(doomed).message.status == "failed", what="the message to fail")
        shown = status(d)
        assert shown.returncode == 4, shown.stdout + shown.stderr
        assert "A has 1 failed message:" in shown.stdout and "coordctl retry" in shown.stdout
        assert "is not a directory" in shown.stdout  # the last error, in the table
        as_json = status(d, "--json")
        assert as_json.returncode == 4 and json.loads(as_json.stdout)["agents"][0]["failed"] == 1
        env = {k: v for k, v in os.environ.items() if k != "COORDD_SOCKET"}
        after = subprocess.run(
            [sys.executable, "-m", "coordctl", "--socket", d.socket, "status", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert after.returncode == 4 and json.loads(after.stdout)["agents"] == json.loads(as_json.stdout)["agents"]
        d.inbox("A").unlink()
        c.retry(doomed)
        wait_until(lambda: c.get(doomed).message.status == "delivered", what="the retried message")
    assert status(d).returncode == 0


def test_a_down_transport_exits_4_and_says_why(make_daemon, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no tmux for the daemon: its tmux agent is down
    d = make_daemon(agents=[{"id": "A"}, {"id": "T", "transport": "tmux", "target": "work:0.0"}])
    with d.client() as c:
        c.send("T", "waits for tmux")
        wait_until(lambda: not c.status().agents[1].healthy, what="T to be seen down")
    shown = status(d)
    assert shown.returncode == 4
    row = next(line for line in shown.stdout.splitlines() if line.startswith("T "))
    assert "down: tmux is not installed" in row and row.split()[:2] == ["T", "tmux"]
    assert re.search(r"T is down since \d\d:\d\d:\d\d \(tmux is not installed", shown.stdout)
    assert "1 queued message waits" in shown.stdout
    agent = json.loads(status(d, "--json").stdout)["agents"][1]
    assert agent["healthy"] is False and "tmux" in agent["reason"] and agent["queued"] == 1
    assert 0 < time.time() - agent["down_since"] < 60
    assert agent["oldest_queued_age"] > 0
