"""`coordd init [--discover]`: a commented starting config where `coordd run` looks for one, 0600, never over
a file or through a link; --discover proposes an agent for each tmux pane running an agent CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
from conftest import wait_until
from tmux_fixtures import READER, TmuxServer, records

from coordctl import Client


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """XDG directories of a user of our own (config, runtime, data, state) and a tmux socket directory; set in
    os.environ, so the tmux servers a test starts and the coordd it runs both use them."""
    tmux_dir = tempfile.mkdtemp(prefix="cdi-")  # short: a Unix socket path has at most 107 bytes
    for var, sub in [("XDG_CONFIG_HOME", "config"), ("XDG_RUNTIME_DIR", "run"), ("XDG_DATA_HOME", "data")]:
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("TMUX_TMPDIR", tmux_dir)
    monkeypatch.delenv("COORDD_CONFIG", raising=False)
    (tmp_path / "run").mkdir(mode=0o700)
    yield tmp_path
    shutil.rmtree(tmux_dir, ignore_errors=True)


def coordd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coordd", *args], capture_output=True, text=True, timeout=60)


def test_init_writes_a_private_valid_config_and_never_replaces_one(home):
    path = home / "config" / "coordd" / "coordd.toml"
    made = coordd("init")
    assert made.returncode == 0, made.stderr
    assert str(path) in made.stdout
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "# inbox_max_files = 1000" in text and f'# socket = "{home}/run/coordd/coordd.sock"' in text
    checked = coordd("check-config")  # no path: the one `coordd run` reads
    assert checked.returncode == 0 and "ok, 8 agents" in checked.stdout, checked.stderr
    again = coordd("init", "--discover")
    assert again.returncode == 1 and "already there (a file)" in again.stderr and "--config PATH" in again.stderr
    assert path.read_text() == text
    elsewhere = home / "other.toml"
    assert coordd("init", "--config", str(elsewhere)).returncode == 0
    assert coordd("check-config", str(elsewhere)).returncode == 0


@pytest.mark.parametrize("target_exists", [False, True])
def test_init_never_writes_through_a_link(home, target_exists):
    path = home / "config" / "coordd" / "coordd.toml"
    path.parent.mkdir(parents=True)
    target = home / "elsewhere.txt"
    if target_exists:
        target.write_text("not yours")
    path.symlink_to(target)
    refused = coordd("init")
    assert refused.returncode == 1 and "a symbolic link" in refused.stderr
    assert (target.read_text() == "not yours") if target_exists else not target.exists()


def test_discover_proposes_the_agent_panes_and_coordd_delivers_to_them(home, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude = bin_dir / "claude"  # an "agent CLI": the tmux test reader under the name claude
    claude.write_text(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({READER!r}, run_name='__main__')\n")
    claude.chmod(0o700)
    server = TmuxServer("agents")  # tmux -L agents: a socket in $TMUX_TMPDIR/tmux-UID
    out = tmp_path / "typed.jsonl"
    proc = None
    try:
        pane = server.session("work", str(claude), str(out))
        server.tmux("new-window", "-t", "work", "-n", "shell", "sh")  # no agent CLI: not proposed
        wait_until(lambda: server.capture(pane).strip(), what="the agent's prompt")
        found = coordd("init", "--discover")
        assert found.returncode == 0, found.stderr
        assert "work: claude in work:0.0" in found.stdout and "tmux server -L agents" in found.stdout
        cfg = tomllib.loads((home / "config" / "coordd" / "coordd.toml").read_text())
        mine = [a for a in cfg["agents"] if a.get("socket_name") == "agents"]
        assert mine == [{"id": "work", "transport": "tmux", "target": "work:0.0", "socket_name": "agents"}]
        assert coordd("check-config").returncode == 0

        # `coordd run` with no --config reads it, and the proposed agent gets its messages.
        log = open(tmp_path / "coordd.log", "wb")  # noqa: SIM115: open while the daemon runs
        proc = subprocess.Popen([sys.executable, "-m", "coordd", "run"], stdout=log, stderr=log)
        socket = str(home / "run" / "coordd" / "coordd.sock")
        wait_until(lambda: os.path.exists(socket), what="coordd to bind its socket")
        with Client(socket) as c:
            c.send("work", "hello from coordd", sender="me")
        wait_until(lambda: any("hello from coordd" in r["text"] for r in records(out)), what="the paste")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        server.kill()
        shutil.rmtree(server.dir, ignore_errors=True)
