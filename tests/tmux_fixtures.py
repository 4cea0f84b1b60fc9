"""A real tmux server on a private socket, with panes running tmux_reader.py (or any command)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import wait_until

READER = str(Path(__file__).with_name("tmux_reader.py"))


class TmuxServer:
    """A tmux server of its own (tmux -S in a short temp dir, or -L NAME), killed by pid at the end."""

    def __init__(self, socket_name: str = "") -> None:
        self.dir = tempfile.mkdtemp(prefix="cdt-")  # short: a Unix socket path has at most 107 bytes
        self.socket_name = socket_name
        self.socket_path = "" if socket_name else os.path.join(self.dir, "tmux.sock")
        self.pids: set[int] = set()
        self.env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
        self.env.update(LANG="C.UTF-8", TERM="xterm-256color")

    def agent_keys(self) -> dict:
        return {"socket_name": self.socket_name} if self.socket_name else {"socket_path": self.socket_path}

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        sock = ["-L", self.socket_name] if self.socket_name else ["-S", self.socket_path]
        return subprocess.run(
            ["tmux", *sock, *args], env=self.env, capture_output=True, text=True, check=check, timeout=10
        )

    def session(self, name: str, *command: str, width: int = 100, height: int = 30) -> str:
        """A new detached session running command; its pane id."""
        cmd = shlex.join(command)
        out = self.tmux(
            "new-session", "-d", "-P", "-F", "#{pane_id} #{pid}", "-s", name, "-x", str(width), "-y", str(height), cmd
        ).stdout.split()
        self.pids.add(int(out[1]))
        return out[0]

    def reader(self, name: str, out: Path, *flags: str) -> str:
        """A session whose pane runs tmux_reader.py appending to out; returns once it shows its prompt."""
        pane = self.session(name, sys.executable, READER, str(out), *flags)
        # Input sent before the reader runs would be flushed by its tty mode change: wait for its first output.
        wait_until(lambda: self.capture(pane).strip(), 10, f"the reader's prompt in {name}")
        return pane

    def capture(self, target: str) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", target).stdout

    def kill(self) -> None:
        self.tmux("kill-server", check=False)
        for pid in self.pids:  # the server's pid, in case kill-server did not reach it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pids.clear()


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
