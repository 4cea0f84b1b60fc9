"""The client trusts only its own daemon (issue 10, point 1).

Another user who creates /tmp/coordd-<uid> (the socket's directory when XDG_RUNTIME_DIR is unset) before
coordd does, or who otherwise ends up listening where a client connects, must receive nothing: the client
checks the directory's owner and mode before connecting, and the listening process's uid (SO_PEERCRED)
before it sends its first byte. And a reply header announcing gigabytes makes no client allocate them.

The squatter is real: a forked child that becomes another uid, listens, counts every byte it receives and
answers each frame with a fake pong, as an attacker imitating coordd would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import run_as
from figures import record

from coordctl import AsyncClient, Client, CoordError, protocol

NOBODY = 65534  # the squatter: a uid with a passwd entry ("nobody"), so messages can name it
VICTIM = 43212  # a uid nobody uses: its fallback directory /tmp/coordd-43212 is ours to squat and remove

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the squatter and victim as other uids")


class Squatter:
    """A process of another uid listening at ``path``: counts connections and bytes, answers frames with pongs.

    ``make_dir``: the squatter creates the socket's directory itself, as that uid (the /tmp squatting);
    otherwise it binds as root in a directory the test made, then becomes the uid before listen() (the
    uid SO_PEERCRED reports is the one that called listen).
    """

    def __init__(self, path: str, uid: int = NOBODY, make_dir: bool = False) -> None:
        self.path = path
        ready_r, ready_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        self._result_r, result_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(ready_r)
            os.close(self._stop_w)
            os.close(self._result_r)
            self._serve(uid, make_dir, ready_w, result_w)
        os.close(ready_w)
        os.close(self._stop_r)
        os.close(result_w)
        with os.fdopen(ready_r, "rb") as ready:
            if ready.read() != b"ready":  # EOF without it: the child failed, and said why
                raise AssertionError(f"the squatter did not start: {self._result()}")

    def _serve(self, uid: int, make_dir: bool, ready_w: int, result_w: int) -> None:
        try:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if not make_dir:
                listener.bind(self.path)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if make_dir:  # open to all, so that the victim's client can connect and send
                os.mkdir(os.path.dirname(self.path))
                os.chmod(os.path.dirname(self.path), 0o755)
                listener.bind(self.path)
                os.chmod(self.path, 0o777)
            listener.listen(8)
            os.write(ready_w, b"ready")
            os.close(ready_w)
            accepted = received = 0
            pending: dict[socket.socket, bytes] = {}
            while True:
                readable, _, _ = select.select([listener, self._stop_r, *pending], [], [])
                if readable == [self._stop_r]:  # only once every connection made so far is accepted and read
                    break
                if listener in readable:
                    conn, _ = listener.accept()
                    pending[conn] = b""
                    accepted += 1
                for conn in [c for c in readable if c in pending]:
                    data = conn.recv(65536)
                    if not data:
                        del pending[conn]
                        conn.close()
                        continue
                    received += len(data)
                    buf = pending[conn] + data
                    while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                        end = 4 + int.from_bytes(buf[:4], "big")
                        req = protocol.request_decoder.decode(buf[4:end])
                        conn.sendall(
                            protocol.frame(
                                protocol.Pong(rid=req.rid, version="0.1.0", protocol=protocol.PROTOCOL_VERSION)
                            )
                        )
                        buf = buf[end:]
                    pending[conn] = buf
            out = f"{accepted} {received}"
        except BaseException as e:
            out = repr(e)
        os.write(result_w, out.encode())
        os._exit(0)

    def _result(self) -> str:
        with os.fdopen(self._result_r, "rb") as f:
            out = f.read().decode()
        os.waitpid(self.pid, 0)
        self.pid = 0
        return out

    def stop(self) -> tuple[int, int]:
        """(connections accepted, bytes received), once the squatter has stopped."""
        os.write(self._stop_w, b"x")
        os.close(self._stop_w)
        out = self._result()
        accepted, received = out.split()
        return int(accepted), int(received)

    def kill(self) -> None:
        if self.pid:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
            self.pid = 0


@pytest.fixture
def squatter():
    made: list[Squatter] = []

    def make(path: str, **kw) -> Squatter:
        made.append(Squatter(path, **kw))
        return made[-1]

    yield make
    for s in made:
        s.kill()


def ping(client_kind: str, path: str | None = None, **kw) -> str:
    """Ping with a Client or an AsyncClient; the reply's repr, or the error's code and message."""
    try:
        if client_kind == "Client":
            with Client(path, timeout=5, **kw) as c:
                return repr(c.ping())

        async def aping() -> str:
            async with AsyncClient(path, timeout=5, **kw) as c:
                return repr(await c.ping())

        return asyncio.run(aping())
    except CoordError as e:
        return f"{e.code} {e.message}"


@pytest.fixture
def foreign_listener(squatter, tmp_path) -> tuple[str, Squatter]:
    """A squatter of another uid listening in a directory that is ours and private: only its uid is wrong."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    path = str(run / "coordd.sock")
    return path, squatter(path)


@needs_root
@pytest.mark.parametrize("client_kind", ["Client", "AsyncClient"])
def test_squatted_fallback_directory_is_refused_and_the_squatter_gets_nothing(squatter, client_kind):
    fallback = Path(f"/tmp/coordd-{VICTIM}")
    shutil.rmtree(fallback, ignore_errors=True)
    try:
        s = squatter(str(fallback / "coordd.sock"), make_dir=True)  # nobody got there first

        def victim() -> str:  # no XDG_RUNTIME_DIR (a container, cron, ssh without a session): the /tmp fallback
            for var in ("XDG_RUNTIME_DIR", "COORDD_SOCKET", "COORDD_ALLOW_UIDS"):
                os.environ.pop(var, None)
            return ping(client_kind)

        out = run_as(VICTIM, VICTIM, victim)
        accepted, received = s.stop()
    finally:
        shutil.rmtree(fallback, ignore_errors=True)
    assert out.startswith("untrusted_socket "), out
    assert str(fallback) in out and f"uid {NOBODY} (nobody)" in out, out  # the path and its owner
    assert "remove" in out, out  # what to do
    assert received == 0 and accepted == 0, "the squatter saw no connection, let alone a byte"
    record(
        f"hardening_squatted_dir_{client_kind}",
        hardening="another uid creates /tmp/coordd-<uid> first",
        outcome="untrusted_socket; 0 bytes and 0 connections reach it",
    )


@needs_root
@pytest.mark.parametrize("client_kind", ["Client", "AsyncClient"])
def test_listener_of_another_uid_in_our_own_directory_is_refused_before_sending(foreign_listener, client_kind):
    path, s = foreign_listener
    out = ping(client_kind, path)
    accepted, received = s.stop()
    assert out.startswith("untrusted_socket "), out
    assert path in out and f"uid {NOBODY} (nobody)" in out and "allow_uids" in out, out
    assert accepted == 1 and received == 0, "connected, then refused before the first byte"
    record(
        f"hardening_foreign_peer_{client_kind}",
        hardening="a socket served by another uid (SO_PEERCRED)",
        outcome="untrusted_socket before the first byte is sent",
    )


@needs_root
@pytest.mark.parametrize("client_kind", ["Client", "AsyncClient"])
def test_an_allowed_uid_is_trusted(foreign_listener, client_kind):
    path, s = foreign_listener
    out = ping(client_kind, path, allow_uids=[NOBODY])  # a daemon run as another user, on purpose
    accepted, received = s.stop()
    assert out.startswith("Pong("), out
    assert accepted == 1 and received > 0


@needs_root
def test_coordctl_refuses_a_squatted_socket_and_says_what_to_do(squatter):
    shared = Path(tempfile.mkdtemp(prefix="coordd-trust-"))
    try:
        shared.chmod(0o1777)  # like /tmp: anyone may create a directory in it
        path = str(shared / "coordd-0" / "coordd.sock")
        s = squatter(path, make_dir=True)
        env = {k: v for k, v in os.environ.items() if k not in ("COORDD_SOCKET", "COORDD_ALLOW_UIDS")}
        run = [sys.executable, "-m", "coordctl", "--socket", path, "send", "Agent-1", "the deploy key is hunter2"]
        refused = subprocess.run(run, capture_output=True, text=True, timeout=60, env=env)
        allowed = subprocess.run(
            [*run[:-3], "ping"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "COORDD_ALLOW_UIDS": f"{NOBODY}"},
        )
        bad_env = subprocess.run(
            [*run[:-3], "ping"], capture_output=True, text=True, timeout=60, env={**env, "COORDD_ALLOW_UIDS": "nobody"}
        )
        accepted, received = s.stop()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error [untrusted_socket]: "), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert str(shared / "coordd-0") in refused.stderr and f"uid {NOBODY} (nobody)" in refused.stderr
    assert allowed.returncode == 0 and "coordd 0.1.0" in allowed.stdout, allowed.stderr  # COORDD_ALLOW_UIDS
    assert bad_env.returncode == 2 and "COORDD_ALLOW_UIDS" in bad_env.stderr, bad_env.stderr
    assert accepted == 1 and 0 < received < 100, "only the allowed ping reached it, never the message"


def test_directory_others_may_write_is_refused(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)  # ours, but anyone could have replaced the socket in it
    path = str(loose / "coordd.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    listener.setblocking(False)
    try:
        for kind in ("Client", "AsyncClient"):
            out = ping(kind, path)
            assert out.startswith("untrusted_socket "), out
            assert str(loose) in out and "mode 0777" in out and "chmod 700" in out, out
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was even attempted
    finally:
        listener.close()
    record(
        "hardening_loose_socket_dir",
        hardening="a socket in a directory others may write",
        outcome="untrusted_socket; no connection attempted",
    )


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_daemon_refuses_a_socket_directory_others_may_write(make_daemon, tmp_path, mode):
    d = make_daemon(start=False)
    run = Path(d.socket).parent
    run.mkdir()
    run.chmod(mode)  # ours, but someone may already have put a socket, or a link as the lock file, in it
    planted = run / "coordd.sock.lock"
    victim = tmp_path / "victim"
    victim.write_text("not coordd's\n")
    planted.symlink_to(victim)
    d.start(expect_ready=False)
    assert d.proc.wait(20) == 1
    assert f"socket directory {run} is writable by group or others (mode {mode:04o})" in d.logtext(), d.logtext()
    assert "chmod 700" in d.logtext()
    assert victim.read_text() == "not coordd's\n" and not os.path.exists(d.socket)
    assert stat.S_IMODE(os.stat(run).st_mode) == mode  # left for its owner to look into
    record(
        f"hardening_daemon_loose_dir_{mode:o}",
        hardening="coordd started in a socket dir others may write",
        outcome="refused with the mode; planted lock link untouched",
    )


class HugeReply:
    """A listener of our own uid that answers the first request with a header announcing 4 GiB - 1,
    then sends nothing more (and keeps the connection open, so a client that waits for the body waits)."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.conns.append(conn)
                if conn.recv(65536):
                    conn.sendall(b"\xff\xff\xff\xff")

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("client_kind", ["Client", "AsyncClient"])
def test_huge_reply_header_fails_fast_without_allocating(tmp_path, client_kind):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    server = HugeReply(str(run / "coordd.sock"))
    try:
        tracemalloc.start()
        start = time.monotonic()
        out = ping(client_kind, str(run / "coordd.sock"))
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        server.close()
    assert out.startswith("protocol_error "), out
    assert "4,294,967,295" in out and "67,108,864" in out and "max_reply_bytes" in out, out  # the size and the cap
    assert elapsed < 2, f"{elapsed:.1f} s: refused at the header, not after the timeout"
    assert peak < 16 << 20, f"{peak:,} bytes allocated at the peak"
    record(
        f"hardening_huge_reply_{client_kind}",
        hardening="a reply header announcing 4 GiB",
        outcome="protocol_error at once; peak allocation under 16 MiB",
    )


def test_max_reply_bytes_is_the_callers_choice(make_daemon):
    d = make_daemon()
    with Client(d.socket, max_reply_bytes=10 << 20) as c:
        c.send("Agent-1", "x" * 200_000)
        assert c.history(agent="Agent-1").messages[0].body == "x" * 200_000  # far under the cap
    with Client(d.socket, max_reply_bytes=100_000) as c:
        with pytest.raises(CoordError) as e:
            c.history(agent="Agent-1")  # a 200 kB page
        assert e.value.code == "protocol_error" and "100,000" in e.value.message
        assert c.ping()  # reconnected: the stream that was cut off is gone
