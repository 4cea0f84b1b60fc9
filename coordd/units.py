"""The systemd user units, as `coordd install-service` writes them.

systemd/coordd.service and systemd/coordd.socket in the repository are
`render()` with the defaults (coordd installed in ~/.local/bin, e.g. by pipx);
tests/test_systemd.py checks they do not drift apart. install-service renders
them with the absolute path of the coordd that runs it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_BIN = "%h/.local/bin"
UNIT_SOCKET = "%t/coordd/coordd.sock"  # %t: $XDG_RUNTIME_DIR, clients' default too (coordctl.paths)

SOCKET = """\
# coordd's socket, created by the user's service manager; the first connection starts coordd.service,
# and connections made while coordd restarts wait in its backlog. Installed by `coordd install-service`.
[Unit]
Description=coordd socket (message delivery for AI coding agents)

[Socket]
ListenStream={socket}
SocketMode=0600
DirectoryMode=0700
Accept=no
FileDescriptorName=coordd

[Install]
WantedBy=sockets.target
"""

SERVICE = """\
# coordd, the message-delivery daemon for AI coding agents. Installed by `coordd install-service`;
# see docs/systemd.md. Logs: journalctl --user -u coordd
[Unit]
Description=coordd (message delivery for AI coding agents)
Requires=coordd.socket
After=coordd.socket

[Service]
# READY=1 once the socket listens and the store is open; WATCHDOG=1 while the loop and the store writer work.
Type=notify
ExecStart={exec_start}
# Synchronous: `systemctl --user reload coordd` fails, naming the key, when the config is invalid
# (coordd keeps the previous one). SIGHUP reloads too.
ExecReload={exec_reload}
Environment=COORDD_SOCKET={socket}
Restart=on-failure
RestartSec=1s
WatchdogSec=30s
TimeoutStartSec=30s
# Longer than daemon.shutdown_grace_ms: deliveries in progress finish, the rest stay queued.
TimeoutStopSec=30s
# SIGTERM to coordd only: a delivery in progress may need its helper processes (tmux, xclip) until it ends.
KillMode=mixed
# Hardening that keeps GUI and tmux delivery working: no PrivateTmp (it would hide the X11 socket in
# /tmp/.X11-unix and tmux's socket), no ProtectHome (inboxes live in home directories).
NoNewPrivileges=yes
ProtectSystem=full
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictNamespaces=yes
SystemCallArchitectures=native
UMask=0077

[Install]
WantedBy=default.target
"""


def escape(path: str) -> str:
    """A literal path for an Exec line: systemd would expand % specifiers and $VARIABLES in it."""
    return path.replace("%", "%%").replace("$", "$$")


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(ch.isspace() for ch in arg) or '"' in arg else arg


def render(bin_dir: str = DEFAULT_BIN, config: str | None = None) -> dict[str, str]:
    """{file name: text} of both units. bin_dir is in unit syntax (may use %h), config a literal path."""
    start = [f"{bin_dir}/coordd", "run"] + (["--config", escape(config)] if config else [])
    reload = [f"{bin_dir}/coordctl", "reload"]
    service = SERVICE.format(
        exec_start=" ".join(map(_quote, start)), exec_reload=" ".join(map(_quote, reload)), socket=UNIT_SOCKET
    )
    return {"coordd.service": service, "coordd.socket": SOCKET.format(socket=UNIT_SOCKET)}


def unit_socket_path() -> str:
    """UNIT_SOCKET with %t expanded as the user's service manager does."""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return UNIT_SOCKET.replace("%t", runtime)


def socket_mismatch(config_path: str, config_socket: str) -> str | None:
    """What to say when the config's daemon.socket is not where coordd.socket listens, else None. Under
    systemd coordd serves the unit's socket; a client that takes the path from the config would look
    in the wrong place."""
    unit = unit_socket_path()
    if os.path.abspath(config_socket) == unit:
        return None
    return (
        f"warning: {config_path} sets daemon.socket = {config_socket!r}, but coordd.socket listens on {unit} "
        f"({UNIT_SOCKET}), which is where coordd serves under systemd and where clients look by default. "
        f"Change the config: remove daemon.socket (its default is {unit}) or set it to that path. "
        f"To keep {config_socket} instead, change ListenStream= in coordd.socket and COORDD_SOCKET= in "
        "coordd.service to it"
    )


def installed_bin_dir() -> str:
    """Where this coordd's `coordd` and `coordctl` commands are (beside its Python), in unit syntax."""
    bin_dir = Path(sys.executable).parent
    if (bin_dir / "coordd").exists() and (bin_dir / "coordctl").exists():
        return escape(str(bin_dir))
    return DEFAULT_BIN


def user_unit_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def install(dest: Path, units: dict[str, str]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in units.items():
        path = dest / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        written.append(path)
    return written
