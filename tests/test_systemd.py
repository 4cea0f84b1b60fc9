"""coordd under systemd, with systemd's side played for real: units checked by systemd-analyze, a
listening socket passed on fd 3, a datagram socket as NOTIFY_SOCKET, real signals, a real FIFO to make a
delivery (or the store writer) block until the test lets it go."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Daemon, coordd_argv, wait_until, write_config

from coordctl import Client, CoordError
from coordctl import protocol as p

REPO = Path(__file__).parent.parent
COORDCTL = [sys.executable, "-m", "coordctl"]
SLOW_RETRY = {"backoff_initial_ms": 60_000, "backoff_max_ms": 60_000, "max_attempts": 10}


class NotifySocket:
    """Stands in for systemd's notify socket: a datagram socket the daemon sends KEY=VALUE lines to."""

    def __init__(self, tmp: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"coordd-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.env = str(tmp / "notify.sock")
            self.sock.bind(self.env)
        self.lines: list[str] = []

    def until(self, line: str, timeout: float = 20.0) -> list[str]:
        """Receive until `line` arrives; every line received so far, in order."""
        self.sock.settimeout(timeout)
        while line not in self.lines:
            self.lines += self.sock.recv(4096).decode().split("\n")
        return self.lines

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.lines += self.sock.recv(4096).decode().split("\n")
        except BlockingIOError:
            pass


@pytest.fixture
def notify_socket(tmp_path):
    """Factory: notify_socket(abstract=...) -> a NotifySocket, closed after the test."""
    made: list[NotifySocket] = []

    def make(abstract: bool) -> NotifySocket:
        made.append(NotifySocket(tmp_path, abstract))
        return made[-1]

    yield make
    for n in made:
        n.sock.close()


def spawn(d: Daemon, env: dict | None = None, listen: socket.socket | None = None, stderr=None) -> subprocess.Popen:
    """Start coordd like systemd would: extra environment, and `listen` as fd 3 with LISTEN_* set."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full.pop("COORDD_CONFIG", None)
    cmd = [*coordd_argv(full), "run", "--config", str(d.config)]
    pass_fds: tuple[int, ...] = ()
    if listen is not None:
        fd = fcntl.fcntl(listen.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)  # anywhere but 3, to move it there
        # LISTEN_PID must be the daemon's pid: the shell sets it to its own, then execs (same pid).
        cmd = ["bash", "-c", f'export LISTEN_PID=$$; exec "$@" 3<&{fd} {fd}<&-', "bash", *cmd]
        pass_fds = (fd,)
        full.update(LISTEN_FDS="1", LISTEN_FDNAMES="coordd")
    out = stderr or open(d.log, "ab")
    d.proc = subprocess.Popen(cmd, cwd=d.tmp, env=full, stdout=out, stderr=subprocess.STDOUT, pass_fds=pass_fds)
    if out is not stderr:
        out.close()  # the child has its own copy
    if listen is not None:
        os.close(fd)
    return d.proc


def refused(d: Daemon) -> bool:
    try:
        with Client(d.socket, timeout=5) as c:
            c.ping()
        return False
    except CoordError:
        return True


def db_statuses(d: Daemon) -> dict[int, str]:
    with contextlib.closing(sqlite3.connect(d.db)) as db:
        return dict(db.execute("SELECT id, status FROM messages"))


def hold_deliveries(d: Daemon, monkeypatch) -> Path:
    """Deliveries wait (off the event loop) on a FIFO until release(): a delivery as slow as the test wants.

    Through the COORDD_TEST_GATE_DELIVERY hook of tests/faulty_coordd.py; the delivery itself is the real one."""
    gate = d.tmp / "gate"
    os.mkfifo(gate)
    monkeypatch.setenv("COORDD_TEST_GATE_DELIVERY", str(gate))
    return gate


def release(gate: Path) -> None:
    """Let the held delivery go on, and hold no more."""
    fd = os.open(gate, os.O_WRONLY)  # the daemon has it open for reading, so this does not block
    gate.unlink()
    os.close(fd)


def agent_row(c: Client, agent: str) -> p.AgentStatus:
    return next(a for a in c.status().agents if a.id == agent)


# --- the unit files ---------------------------------------------------------------------------------------


def verify(units: list[Path], home: Path, runtime: Path) -> list[str]:
    """systemd-analyze's complaints about our units (it exits 0 on warnings, so read what it says)."""
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    run = subprocess.run(
        ["systemd-analyze", "--user", "verify", *map(str, units)], env=env, capture_output=True, text=True, timeout=60
    )
    out = (run.stdout + run.stderr).splitlines()
    return [line for line in out if "coordd" in line] + ([f"exit {run.returncode}"] if run.returncode else [])


@pytest.fixture
def analyze_env(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package `systemd`, in the Makefile's APT_PKGS)")
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    for tool in ("coordd", "coordctl"):  # what ExecStart= and ExecReload= run, as pipx would install them
        (home / ".local" / "bin" / tool).symlink_to(sys.executable)
    return home, runtime


def test_repo_units_pass_systemd_analyze_verify(analyze_env, tmp_path):
    home, runtime = analyze_env
    units = [REPO / "systemd" / "coordd.service", REPO / "systemd" / "coordd.socket"]
    assert verify(units, home, runtime) == []
    service = units[0].read_text()
    assert "Type=notify" in service and "WatchdogSec=" in service and "ExecReload=" in service
    assert "PrivateTmp" not in service.replace("no PrivateTmp", "")  # it would hide the X11 socket
    # The check can fail: a broken copy is caught.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "coordd.service").write_text(service.replace("Type=notify", "Type=notfy"))
    shutil.copy(units[1], broken / "coordd.socket")
    assert any("notfy" in line for line in verify([broken / "coordd.service", broken / "coordd.socket"], home, runtime))


def test_install_service_writes_verified_units(analyze_env, tmp_path):
    from coordd import units

    home, runtime = analyze_env
    cfg = write_config(tmp_path / "my config.toml", {}, [{"id": "Agent-1"}])
    dest = tmp_path / "units"
    run = subprocess.run(
        [sys.executable, "-m", "coordd", "install-service", "--config", str(cfg), "--dir", str(dest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "import-environment DISPLAY XAUTHORITY" in run.stdout and "enable-linger" in run.stdout
    service = (dest / "coordd.service").read_text()
    assert f'--config "{cfg}"' in service  # quoted: the path has a space
    assert verify([dest / "coordd.service", dest / "coordd.socket"], home, runtime) == []
    # The repository's units are the same template with the default location: they cannot drift apart.
    for name, text in units.render().items():
        assert (REPO / "systemd" / name).read_text() == text
    bad = write_config(tmp_path / "bad.toml", {"daemon": {"sockett": "x"}}, [{"id": "A"}])
    run = subprocess.run(
        [sys.executable, "-m", "coordd", "install-service", "--config", str(bad), "--dir", str(dest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "sockett" in run.stderr


def test_install_service_warns_when_the_configs_socket_is_not_the_units(tmp_path):
    runtime = tmp_path / "runtime"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    unit_socket = runtime / "coordd" / "coordd.sock"

    def install(daemon: dict) -> subprocess.CompletedProcess:
        cfg = write_config(tmp_path / "coordd.toml", {"daemon": daemon} if daemon else {}, [{"id": "A"}])
        return subprocess.run(
            [sys.executable, "-m", "coordd", "install-service", "--config", str(cfg), "--dir", str(tmp_path / "u")],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    elsewhere = install({"socket": str(tmp_path / "elsewhere.sock")})
    assert elsewhere.returncode == 0 and (tmp_path / "u" / "coordd.socket").exists()  # a warning, not a refusal
    warning = elsewhere.stderr
    assert warning.startswith("warning: ") and "daemon.socket" in warning
    assert str(tmp_path / "elsewhere.sock") in warning and str(unit_socket) in warning
    assert "Change the config" in warning and "ListenStream=" in warning  # which to change, and the other way
    assert install({"socket": str(unit_socket)}).stderr == ""
    assert install({}).stderr == ""  # the default is the unit's


# --- readiness, watchdog, socket activation ---------------------------------------------------------------------


def test_notify_ready_status_watchdog_stopping_in_order(make_daemon, notify_socket):
    d = make_daemon(start=False, delivery=SLOW_RETRY)
    notify = notify_socket(abstract=True)
    proc = spawn(d, {"NOTIFY_SOCKET": notify.env, "WATCHDOG_USEC": "400000"})
    notify.until("READY=1")
    with d.client() as c:  # READY means the socket listens and the store is open: no retry needed
        assert c.status().agents
        d.inbox("Agent-2").parent.mkdir(parents=True)
        d.inbox("Agent-2").write_text("a file where the inbox directory should be: deliveries fail")
        c.batch([{"to": "Agent-2", "body": f"m{i}"} for i in range(3)])
    notify.until("WATCHDOG=1")
    wait_until(lambda: notify.drain() or any("3 queued" in line for line in notify.lines), 10, "a refreshed STATUS")
    proc.send_signal(signal.SIGTERM)
    lines = notify.until("STOPPING=1")
    assert proc.wait(20) == 0
    assert lines[0] == "READY=1" and lines[1].startswith("STATUS=4 agents, 0 queued")
    assert lines.index("WATCHDOG=1") > 1
    assert lines.index("STOPPING=1") == len(lines) - 1 > lines.index("WATCHDOG=1")
    assert {line.split("=")[0] for line in lines} == {"READY", "STATUS", "WATCHDOG", "STOPPING"}


def test_watchdog_pings_stop_while_the_store_writer_hangs(make_daemon, notify_socket, tmp_path):
    d = make_daemon(start=False)
    notify = notify_socket(abstract=False)
    hang = tmp_path / "hang-writer"
    period = 0.1  # WATCHDOG_USEC / 2
    proc = spawn(d, {"NOTIFY_SOCKET": notify.env, "WATCHDOG_USEC": "200000", "COORDD_TEST_HANG_WRITER": str(hang)})
    notify.until("WATCHDOG=1")
    os.mkfifo(hang)  # the next commit (the watchdog's own probe, within a period) blocks on it
    wait_until(lambda: "store writer waits" in d.logtext(), 10, "the writer to block")
    notify.drain()
    notify.lines.clear()
    notify.sock.settimeout(10 * period)
    with pytest.raises(TimeoutError):  # ten periods without a ping
        notify.lines += notify.sock.recv(4096).decode().split("\n")
    fd = os.open(hang, os.O_WRONLY)  # let the writer go: it reads to EOF, and the file is gone for next time
    os.unlink(hang)
    os.close(fd)
    notify.until("WATCHDOG=1", 10)  # pings resume once the writer commits again
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_socket_activation_serves_coordctl_and_leaves_the_socket_alone(make_daemon, notify_socket, tmp_path, request):
    d = make_daemon(start=False, daemon={"socket": str(tmp_path / "configured" / "coordd.sock")})
    run = tmp_path / "sd-run"
    run.mkdir(mode=0o700)
    path = str(run / "coordd.sock")
    listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # what coordd.socket makes
    request.addfinalizer(listen.close)
    listen.bind(path)
    os.chmod(path, 0o660)  # not coordd's own 0600: shows coordd does not touch it
    listen.listen(16)
    notify = notify_socket(abstract=True)
    proc = spawn(d, {"NOTIFY_SOCKET": notify.env}, listen=listen)
    ctl = [*COORDCTL, "--socket", path]
    # No wait for readiness: like under systemd, a client's connection waits in the socket's backlog.
    sent = subprocess.run(
        [*ctl, "send", "Agent-1", "via systemd's socket", "--wait"], capture_output=True, text=True, timeout=60
    )
    assert sent.returncode == 0, sent.stderr
    status = subprocess.run([*ctl, "--json", "status"], capture_output=True, text=True, timeout=60)
    assert f'"socket":"{path}"' in status.stdout
    assert not (tmp_path / "configured" / "coordd.sock").exists()
    notify.until("READY=1")
    # The lock beside the inherited socket keeps a second daemon off it.
    (tmp_path / "other").mkdir()
    other = make_daemon(sub="other", start=False, daemon={"socket": path}).start(expect_ready=False)
    assert other.proc.wait(20) == 1 and "another coordd" in other.logtext()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660  # still there, untouched
    # While no coordd runs, a client connects (the socket still listens) and waits; the next coordd answers it.
    pong: list = []
    with Client(path, timeout=30) as early:
        early.connect()  # accepted into the backlog: nothing serves it yet
        client = threading.Thread(target=lambda: pong.append(early.ping()))
        client.start()
        proc = spawn(d, listen=listen)
        client.join(30)
    assert pong and pong[0].protocol == p.PROTOCOL_VERSION
    with Client(path) as c:
        assert c.history(agent="Agent-1").messages[0].status == "delivered"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert os.path.exists(path)


def test_a_request_waiting_in_the_socket_is_answered_once_coordd_is_ready(make_daemon, tmp_path, request):
    # A request already in systemd's socket when coordd starts is read only once everything it may ask for
    # is in place: here a reload, whose handler is wired last, after the metrics endpoint starts (an await).
    d = make_daemon(start=False, metrics={"listen": "127.0.0.1:0"})
    run = tmp_path / "sd-run"
    run.mkdir(mode=0o700)
    path = str(run / "coordd.sock")
    listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    request.addfinalizer(listen.close)
    listen.bind(path)
    listen.listen(16)
    replies: list = []
    with Client(path, timeout=30) as early:
        early.connect()
        client = threading.Thread(target=lambda: replies.append(early.reload()))
        client.start()
        proc = spawn(d, listen=listen)
        client.join(30)
    assert replies and replies[0].config == str(d.config), d.logtext()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_systemds_own_socket_activate_tool_starts_coordd(make_daemon, tmp_path):
    """Interoperability with systemd's implementation of the protocol, not only with ours."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package `systemd`)")
    d = make_daemon(start=False)
    path = str(tmp_path / "activated.sock")
    keep = [f"--setenv={k}" for k in ("PATH", "HOME", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE") if k in os.environ]
    cmd = [
        tool,
        "--listen",
        path,
        "--fdname=coordd",
        *keep,
        sys.executable,
        "-m",
        "coordd",
        "run",
        "--config",
        str(d.config),
    ]
    with open(d.log, "ab") as log:
        d.proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: os.path.exists(path), what="the tool to listen")
    # The first connection makes the tool exec coordd in its own process, the socket on fd 3.
    sent = subprocess.run(
        [*COORDCTL, "--socket", path, "send", "Agent-1", "hello", "--wait"], capture_output=True, text=True, timeout=60
    )
    assert sent.returncode == 0, sent.stderr + d.logtext()
    with Client(path) as c:
        status = c.status()
    assert status.pid == d.proc.pid and status.socket == path
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    assert os.path.exists(path) and "socket-activated" in d.logtext()


# --- graceful stop ------------------------------------------------------------------------------------------


def test_sigterm_during_a_slow_delivery_loses_nothing(make_daemon, monkeypatch):
    d = make_daemon(agents=[{"id": "Slow", "chunk": 1}], start=False, daemon={"shutdown_grace_ms": 30_000})
    gate = hold_deliveries(d, monkeypatch)
    d.start()
    with d.client() as c:
        assert c.send("Slow", "first, slow") == 1
        c.batch([{"to": "Slow", "body": f"later {i}"} for i in range(3)])
        wait_until(lambda: agent_row(c, "Slow").in_flight == 1, what="the slow delivery to start")
    d.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: refused(d), what="coordd to stop accepting")
    assert d.proc.poll() is None  # still finishing the delivery in progress
    release(gate)
    assert d.proc.wait(20) == 0
    # Final commit: the finished delivery is recorded, the rest stayed queued for the next start.
    assert db_statuses(d) == {1: "delivered", 2: "queued", 3: "queued", 4: "queued"}
    assert "finishing deliveries in progress" in d.logtext() and "did not finish" not in d.logtext()
    d.start()
    with d.client() as c:
        wait_until(lambda: agent_row(c, "Slow").delivered == 4, what="the rest after the restart")
        assert [m.attempts for m in c.history(agent="Slow").messages] == [1, 1, 1, 1]
    assert sorted(f.name for f in d.inbox("Slow").iterdir()) == [f"{i:012d}.md" for i in range(1, 5)]


def test_second_signal_forces_exit_and_queued_messages_stay(make_daemon, monkeypatch):
    d = make_daemon(agents=[{"id": "Slow", "chunk": 1}], start=False, daemon={"shutdown_grace_ms": 30_000})
    gate = hold_deliveries(d, monkeypatch)
    d.start()
    with d.client() as c:
        c.batch([{"to": "Slow", "body": f"m{i}"} for i in range(3)])
        wait_until(lambda: agent_row(c, "Slow").in_flight == 1, what="the slow delivery to start")
    d.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: refused(d), what="coordd to stop accepting")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(5) == -signal.SIGTERM  # at once, not after the 30 s grace
    assert db_statuses(d) == {1: "queued", 2: "queued", 3: "queued"}
    gate.unlink()
    d.start()
    with d.client() as c:
        wait_until(lambda: agent_row(c, "Slow").delivered == 3, what="delivery after the restart")


# --- reload ---------------------------------------------------------------------------------------------------


def rewrite(d: Daemon, agents: list[dict], **daemon_keys) -> None:
    sections = {
        "daemon": {"socket": d.socket, "workspace": str(d.workspace), **daemon_keys},
        "store": {"path": d.db},
        "delivery": SLOW_RETRY,
    }
    write_config(d.config, sections, agents)


def test_reload_adds_changes_and_removes_agents_without_losing_messages(make_daemon, tmp_path):
    b_old, b_new, c_new = tmp_path / "b-old", tmp_path / "b-new", tmp_path / "c-new"
    agents = [{"id": "A"}, {"id": "B", "inbox_dir": str(b_old)}, {"id": "C"}]
    d = make_daemon(agents=agents, delivery=SLOW_RETRY)
    b_old.write_text("not a directory")  # B and C fail and back off for a minute: their messages stay queued
    d.inbox("C").parent.mkdir(parents=True)
    d.inbox("C").write_text("not a directory")
    with d.client() as c:
        c.batch([{"to": "B", "body": f"b{i}"} for i in range(2)] + [{"to": "C", "body": f"c{i}"} for i in range(3)])
        wait_until(lambda: agent_row(c, "B").last_error and agent_row(c, "C").last_error, what="failed attempts")

        rewrite(d, [{"id": "A"}, {"id": "B", "inbox_dir": str(b_new)}, {"id": "D", "groups": ["new"]}])
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: [a.id for a in c.status().agents] == ["A", "B", "D"], what="the reload")
        status = c.status()
        assert (status.orphaned, status.orphaned_agents) == (3, ["C"])
        wait_until(lambda: len(list(b_new.glob("*.md"))) == 2, what="B's queue to go to its new inbox")
        with pytest.raises(CoordError) as e:
            c.send("C", "gone")
        assert e.value.code == "unknown_agent"
        assert [m.status for m in c.history(agent="C").messages] == ["queued"] * 3
        assert len(c.broadcast("hello new group", group="new")) == 1

        rewrite(d, [{"id": "A"}, {"id": "B", "inbox_dir": str(b_new)}, {"id": "C", "inbox_dir": str(c_new)}])
        run = subprocess.run([*COORDCTL, "--socket", d.socket, "reload"], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert "added: C" in run.stdout and "removed: D" in run.stdout
        wait_until(lambda: len(list(c_new.glob("*.md"))) == 3, what="C's orphaned messages after it came back")
        assert c.status().orphaned == 0
        bodies = [f.read_text().rsplit("---\n\n", 1)[1].strip() for f in sorted(c_new.glob("*.md"))]
        assert bodies == ["c0", "c1", "c2"]  # in their order
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    assert set(db_statuses(d).values()) == {"delivered"}


def test_reload_with_a_broken_config_keeps_serving_the_old_one(make_daemon, notify_socket, monkeypatch):
    notify = notify_socket(abstract=True)
    monkeypatch.setenv("NOTIFY_SOCKET", notify.env)
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], delivery=SLOW_RETRY)
    notify.until("READY=1")
    notify.lines.clear()
    rewrite(d, [{"id": "A"}], sockett="/typo")
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    d.proc.send_signal(signal.SIGHUP)
    lines = notify.until("READY=1")  # systemd's reload protocol: RELOADING=1 with the time, then READY=1
    lines = lines[lines.index("RELOADING=1") :]
    assert before <= int(lines[1].removeprefix("MONOTONIC_USEC=")) and lines[2] == "READY=1"
    assert lines[3].startswith("STATUS=") and "last reload failed" in lines[3]
    with d.client() as c:
        wait_until(lambda: c.status().config_error, what="the reload error in status")
        assert "sockett" in c.status().config_error
        assert c.send("B", "B is still served", wait=True)  # the old config
        run = subprocess.run([*COORDCTL, "--socket", d.socket, "reload"], capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and "bad_config" in run.stderr and "sockett" in run.stderr
        shown = subprocess.run([*COORDCTL, "--socket", d.socket, "status"], capture_output=True, text=True, timeout=60)
        assert "sockett" in shown.stdout
        rewrite(d, [{"id": "A"}, {"id": "B"}, {"id": "C"}])
        assert c.reload().added == ["C"]
        status = c.status()
        assert status.config_error is None and [a.id for a in status.agents] == ["A", "B", "C"]


# --- logging ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("journald", [True, False])
def test_log_lines_for_the_journal(make_daemon, tmp_path, journald):
    d = make_daemon(start=False)
    err = open(tmp_path / "stderr.log", "wb")
    st = os.fstat(err.fileno())
    # systemd names the stream it connects stderr to; one that is not our stderr means no journal.
    stream = f"{st.st_dev}:{st.st_ino}" if journald else f"{st.st_dev}:{st.st_ino + 1}"
    proc = spawn(d, {"JOURNAL_STREAM": stream}, stderr=err)
    err.close()  # the child has its own copy
    wait_until(lambda: "coordd serving" in (tmp_path / "stderr.log").read_text(), 20, "coordd to start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    lines = (tmp_path / "stderr.log").read_text().splitlines()
    assert lines
    if journald:  # no timestamp (journald adds its own), the level as a syslog priority journald reads
        assert all(re.match(r"<[2-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) coordd", line) for line in lines), lines
    else:
        assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) coordd", line) for line in lines)
