"""The real daemon as a subprocess on a temp socket and a temp database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import faulty_coordd
import pytest

from coordctl import Client, CoordError

START_TIMEOUT = 20.0


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll predicate until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)  # noqa: sleep-ok: the poll interval of a deadline-bounded wait


def cancel_between_attempts(c: Client, message_id: int) -> bool:
    """Cancel a message whose deliveries keep failing. Each attempt has it in flight for a moment, and a
    message in flight cannot be cancelled (bad_state): False then, to be polled with wait_until."""
    try:
        c.cancel(message_id)
    except CoordError as e:
        if e.code == "bad_state" and "delivering" in e.message:
            return False
        raise
    return True


def concurrently(n: int, client) -> None:
    """Run client(0) .. client(n-1) in n threads at once; re-raise the first error any of them hit."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            client(k)
        except BaseException as e:  # surfaced below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def run_as(uid: int, gid: int, fn) -> str:
    """Fork, become uid/gid, return str(fn()) or the repr of its exception (root only).

    No exec is needed, so the venv need not be readable by that uid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            out = str(fn())
        except BaseException as e:
            out = repr(e)
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted on path for the block (root only; skips the test where mounting is not permitted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {out.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def write_config(path: Path, sections: dict, agents: list[dict]) -> Path:
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    for a in agents:
        lines.append("[[agents]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in a.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def coordd_argv(env: dict) -> list[str]:
    """How to start coordd: `python -m coordd`, or, when a test set one of its fault hooks in env, the same
    daemon through tests/faulty_coordd.py, which installs them first."""
    if any(env.get(k) for k in faulty_coordd.HOOKS):
        return [sys.executable, str(Path(__file__).parent / "faulty_coordd.py")]
    return [sys.executable, "-m", "coordd"]


class Daemon:
    """One coordd process. `start()` returns once it answers ping."""

    def __init__(self, tmp: Path, agents: list[dict] | None = None, **sections) -> None:
        self.tmp = tmp
        self.socket = str(tmp / "run" / "coordd.sock")
        self.db = str(tmp / "state" / "coordd.db")
        self.workspace = tmp / "ws"
        sections.setdefault("daemon", {})
        sections["daemon"] = {"socket": self.socket, "workspace": str(self.workspace), **sections["daemon"]}
        sections["store"] = {"path": self.db, **sections.get("store", {})}
        self.agents = agents or [{"id": f"Agent-{n}"} for n in range(1, 5)]
        self.config = write_config(tmp / "coordd.toml", sections, self.agents)
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "coordd.log"

    def inbox(self, agent: str) -> Path:
        return self.workspace / "agent_workspaces" / agent / "inbox"

    def start(self, expect_ready: bool = True) -> Daemon:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("COORDD_CONFIG", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*coordd_argv(env), "run", "--config", str(self.config)],
                cwd=self.tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if expect_ready:
            wait_until(self._answers, START_TIMEOUT, f"coordd to answer (log: {self.logtext()})")
        return self

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"coordd exited with {self.proc.returncode}: {self.logtext()}")
        try:
            with Client(self.socket) as c:
                c.ping()
            return True
        except CoordError:
            return False

    def client(self) -> Client:
        return Client(self.socket)

    def write_old_store(self, version: int, insert: str, rows: list[tuple]) -> None:
        """Before start: a database as a coordd of schema `version` left it, holding rows (insert: their SQL)."""
        from coordd import schema

        self.tmp.joinpath("state").mkdir(exist_ok=True)
        db = sqlite3.connect(self.db)
        db.executescript("".join(schema.MIGRATIONS[:version]) + f"PRAGMA user_version = {version};")
        db.executemany(insert, rows)
        db.commit()
        db.close()

    def logtext(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture
def make_daemon(tmp_path):
    """Factory: make_daemon(agents=[...], delivery={...}) -> a started Daemon, stopped after the test."""
    started: list[Daemon] = []

    def make(agents: list[dict] | None = None, start: bool = True, sub: str = "", **sections) -> Daemon:
        d = Daemon(tmp_path / sub if sub else tmp_path, agents, **sections)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()


def read_inbox_file(path: Path) -> tuple[dict, str]:
    """An inbox file's header fields and its body. The header is `key: value` lines between `---` lines, each
    value JSON (README, Transports); a value can hold no line break, so the first `---` line ends it."""
    head, body = path.read_text().split("\n---\n\n", 1)
    assert head.startswith("---\n"), f"{path}: no header"
    fields: dict = {}
    for line in head[4:].split("\n"):
        key, sep, value = line.partition(": ")
        assert sep and key not in fields, f"{path}: header line {line!r} is not a new `key: value`"
        fields[key] = json.loads(value)
    return fields, body[:-1]


def inbox_bodies(path: Path) -> list[str]:
    """The bodies in an inbox directory, in file-name (delivery id) order."""
    return [read_inbox_file(f)[1] for f in sorted(path.glob("*.md"))]
