"""Real nats-server processes for the cluster tests: JetStream on a free loopback port, storage in a temp dir.

`NatsServer.start()` returns once the server accepts connections (polled with a deadline); `kill()` is a
SIGKILL by pid, `start()` again brings it back on the same port and storage (JetStream keeps what it stored).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import wait_until

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    def __init__(
        self, tmp: Path, name: str = "nats", cluster_port: int = 0, routes: list[int] | None = None, config: str = ""
    ) -> None:
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.config = config  # nats-server config text (e.g. users and their permissions), if any
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.dir / "js")]
        argv += ["-n", self.name, "-l", str(self.log)]
        if self.config:
            path = self.dir / "server.conf"
            path.write_text(self.config)
            argv += ["-c", str(path)]
        if self.cluster_port:
            argv += ["--cluster_name", "coordd", "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            argv += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        return argv

    def start(self) -> NatsServer:
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._accepts, 10.0, f"nats-server on port {self.port} to accept")
        return self

    def _accepts(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"nats-server exited with {self.proc.returncode}: {self.logtext()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(4).startswith(b"INFO")  # the server greets each client with INFO
        except OSError:
            return False

    def logtext(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def nats_server(tmp_path):
    """One nats-server with JetStream, killed after the test."""
    if not Path(NATS_SERVER).exists():
        pytest.fail("nats-server is not installed: `make deps` installs it (Debian package nats-server)")
    server = NatsServer(tmp_path).start()
    yield server
    server.kill()


def node_permissions(node: str, stream: str = "COORDD") -> str:
    """A nats-server `permissions` block for one coordd node, as docs/cluster.md shows it: it may publish to every
    node's subjects, but read (through JetStream's API) and acknowledge only its own, and subscribe only to its
    own inboxes."""
    kv = f"KV_{stream}_AGENTS"
    mine = [f"coordd-in-{node}", f"coordd-receipts-{node}"]
    publish = [
        "coordd.node.*.in",
        "coordd.node.*.receipts",
        "$JS.API.INFO",
        *(f"$JS.API.STREAM.{op}.{s}" for op in ("INFO", "CREATE", "UPDATE") for s in (stream, kv)),
        *(
            f"$JS.API.CONSUMER.{op}.{stream}.{c}"
            for op in ("INFO", "DELETE", "MSG.NEXT", "DURABLE.CREATE")
            for c in mine
        ),
        *(f"$JS.API.CONSUMER.CREATE.{stream}.{c}{tail}" for c in mine for tail in ("", ".>")),
        *(f"$JS.ACK.{stream}.{c}.>" for c in mine),
        f"$KV.{stream}_AGENTS.>",
        f"$JS.API.CONSUMER.CREATE.{kv}",
        f"$JS.API.CONSUMER.CREATE.{kv}.>",
        f"$JS.API.CONSUMER.DELETE.{kv}.>",
        f"$JS.API.CONSUMER.INFO.{kv}.>",
        f"$JS.FC.{kv}.>",
    ]
    quoted = ", ".join(f'"{subject}"' for subject in publish)
    return f'{{ publish: {{ allow: [{quoted}] }}, subscribe: {{ allow: ["_INBOX_{node}.>"] }} }}'
