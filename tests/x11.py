"""Real X for the GUI tests: an Xvfb server and xterm windows running `cat >> FILE` (or another program).

Every process started here is stopped here, by pid. Readiness is waited for, not
slept for: Xvfb writes its display number to -displayfd once it accepts
clients, and a window counts as up once `xwininfo -root -tree` lists its title.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import wait_until

SCREEN = (1280, 1024)
# xterm pastes the CLIPBOARD (not PRIMARY) on ctrl+shift+v only with this translation.
PASTE_XRM = "XTerm*VT100.translations: #override Ctrl Shift <Key>V: insert-selection(CLIPBOARD)"
TOOLS = ("Xvfb", "xterm", "xwininfo")


def require_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: xvfb xterm x11-utils; `make deps` installs them)")


class XServer:
    """One Xvfb. start() returns once it accepts clients; kill() is a crash (SIGKILL).

    -noreset: an X server resets when its last client leaves, refusing connections meanwhile,
    which the short-lived xwininfo polls would otherwise trigger.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.number: int | None = None
        self.proc: subprocess.Popen | None = None
        self.windows: list[subprocess.Popen] = []

    @property
    def display(self) -> str:
        return f":{self.number}"

    def start(self) -> XServer:
        """On a free display number the first time; on the same number after kill()."""
        r, w = os.pipe()
        where = [self.display] if self.number is not None else []
        args = [
            "Xvfb",
            *where,
            "-displayfd",
            str(w),
            "-screen",
            "0",
            f"{SCREEN[0]}x{SCREEN[1]}x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ]
        with open(self.tmp / "xvfb.log", "ab") as log:
            self.proc = subprocess.Popen(args, pass_fds=(w,), stdout=log, stderr=subprocess.STDOUT)
        os.close(w)
        with os.fdopen(r) as f:
            line = f.readline()  # blocks until Xvfb is ready, or EOF if it died
        if not line.strip():
            self.proc.wait(5)
            raise AssertionError(f"Xvfb did not start: {(self.tmp / 'xvfb.log').read_text()}")
        self.number = int(line)
        return self

    def env(self) -> dict:
        return {**os.environ, "DISPLAY": self.display}

    def xterm(self, title: str, x: int, y: int, out: Path, command: list[str] | None = None) -> subprocess.Popen:
        """An xterm at +x+y running `cat >> out` (or command); returns once the window is mapped."""
        env = {**self.env(), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        log = self.tmp / f"xterm-{title}.log"
        with open(log, "wb") as errors:
            proc = subprocess.Popen(
                [
                    "xterm",
                    "-u8",
                    "-T",
                    title,
                    "-geometry",
                    f"80x20+{x}+{y}",
                    "-xrm",
                    PASTE_XRM,
                    "-e",
                    *(command or ["sh", "-c", 'exec cat >> "$0"', str(out)]),
                ],
                env=env,
                stdout=errors,
                stderr=subprocess.STDOUT,
            )
        self.windows.append(proc)
        wait_until(lambda: self.mapped(title) or proc.poll() is not None, 15, f"xterm {title} to map")
        assert proc.poll() is None, f"xterm {title} exited with {proc.returncode}: {log.read_text()}"
        return proc

    def mapped(self, title: str) -> bool:
        tree = subprocess.run(["xwininfo", "-root", "-tree"], env=self.env(), capture_output=True, text=True)
        return f'"{title}"' in tree.stdout

    def kill(self) -> None:
        """The X server crashes: its windows (and their cats) go with it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        for w in self.windows:
            w.wait(10)
        self.windows.clear()

    def stop(self) -> None:
        for w in self.windows:
            if w.poll() is None:
                w.terminate()
                w.wait(10)
        self.windows.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def xserver(tmp_path, monkeypatch):
    """A running Xvfb; DISPLAY and an (empty) XAUTHORITY point at it for the daemon started in the test."""
    require_tools()
    auth = tmp_path / "xauthority"
    auth.touch()
    monkeypatch.setenv("XAUTHORITY", str(auth))  # python-xlib refuses to connect without an authority file
    x = XServer(tmp_path).start()
    monkeypatch.setenv("DISPLAY", x.display)
    try:
        yield x
    finally:
        x.stop()
