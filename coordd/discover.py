"""`coordd init --discover`: find the tmux panes whose foreground program is an agent CLI, and propose an agent each.

Which servers: every tmux socket of this user in the directories tmux uses (`$TMUX_TMPDIR/tmux-UID/` and
`/tmp/tmux-UID/`), the default server's (`default`) among them, and any socket given by path. Which
program a pane runs: tmux's `pane_current_command` (argv[0] of the foreground process) is often only the
interpreter (`node`, `sh`), so on Linux the foreground process group's leader is read from /proc as well:
its name (`comm`, a script's own name) and the first two words of its command line (`node
/usr/local/bin/gemini`). A pane matches when any of these names a known agent CLI.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from coordd.config import AGENT_ID, TMUX_TARGET

AGENT_PROGRAMS = ("claude", "codex", "gemini", "aider", "cursor-agent")

_FIELDS = ("pane_id", "session_name", "window_index", "window_name", "pane_index", "pane_pid", "pane_current_command")
_FORMAT = "\t".join(f"#{{{f}}}" for f in _FIELDS)


@dataclass
class Pane:
    """An agent's pane, and the [[agents]] keys that reach it."""

    program: str  # the agent CLI it runs
    pane_id: str
    session: str
    window: str  # its name
    target: str  # session:window.pane, or the pane id when the session name cannot be a target
    socket_name: str = ""  # tmux -L; with neither socket key, the default server
    socket_path: str = ""  # tmux -S
    id: str = ""  # the proposed agent id

    def server(self) -> str:
        return (
            f"-L {self.socket_name}"
            if self.socket_name
            else f"-S {self.socket_path}"
            if self.socket_path
            else "default"
        )


def socket_dirs() -> list[Path]:
    """Where tmux keeps this user's sockets: $TMUX_TMPDIR/tmux-UID (what tmux itself uses), then /tmp/tmux-UID."""
    uid = os.getuid()
    dirs = [Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{uid}", Path("/tmp") / f"tmux-{uid}"]
    return list(dict.fromkeys(dirs))


def sockets(extra: list[str]) -> list[tuple[str, str, str]]:
    """(socket_name, socket_path, path) of each server to ask: ("", "", path) for the default server."""
    found = []
    own_dir = socket_dirs()[0]
    for d in socket_dirs():
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            path = d / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
                continue
            if d == own_dir and name == "default":
                found.append(("", "", str(path)))
            elif d == own_dir and AGENT_ID.match(name):
                found.append((name, "", str(path)))
            else:
                found.append(("", str(path), str(path)))
    found += [("", os.path.abspath(p), os.path.abspath(p)) for p in extra]
    return list({path: (n, p, path) for n, p, path in found}.values())  # each socket once


def find(programs: list[str], extra_sockets: list[str] | None = None) -> list[Pane]:
    """The panes of every server found whose foreground program is one of programs, each with a unique id."""
    wanted = set(programs)
    panes = []
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    for socket_name, socket_path, path in sockets(extra_sockets or []):
        try:
            out = subprocess.run(
                ["tmux", "-S", path, "list-panes", "-a", "-F", _FORMAT],
                capture_output=True,
                text=True,
                timeout=5,
                env=env,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode != 0:  # a stale socket: no server behind it
            continue
        for line in out.stdout.splitlines():
            fields = dict(zip(_FIELDS, line.split("\t"), strict=False))
            if len(fields) != len(_FIELDS):
                continue
            program = next((n for n in names_of(fields) if n in wanted), None)
            if program is None:
                continue
            target = f"{fields['session_name']}:{fields['window_index']}.{fields['pane_index']}"
            if not TMUX_TARGET.match(target):  # a session name a target cannot hold: the pane id (not stable)
                target = fields["pane_id"]
            panes.append(
                Pane(
                    program=program,
                    pane_id=fields["pane_id"],
                    session=fields["session_name"],
                    window=fields["window_name"],
                    target=target,
                    socket_name=socket_name,
                    socket_path=socket_path,
                )
            )
    name_agents(panes)
    return panes


def names_of(fields: dict[str, str]) -> list[str]:
    """What a pane's foreground program may be called: tmux's name for it, then, on Linux, its process group
    leader's name and the base names of the first two words of its command line."""
    names = [fields["pane_current_command"]]
    try:
        shell_stat = Path(f"/proc/{int(fields['pane_pid'])}/stat").read_text()
        foreground = int(shell_stat.rpartition(")")[2].split()[5])  # tpgid: the terminal's foreground group
        comm = Path(f"/proc/{foreground}/comm").read_text().strip()
        argv = Path(f"/proc/{foreground}/cmdline").read_bytes().split(b"\0")[:2]
    except (OSError, ValueError, IndexError):
        return names
    return [*names, comm, *(os.path.basename(a.decode(errors="replace")) for a in argv if a)]


def name_agents(panes: list[Pane]) -> None:
    """An id each: the session's name, with the window's when the session has several such panes; made valid
    (AGENT_ID) and unique with a number."""
    per_session: dict[tuple[str, str, str], int] = {}
    for p in panes:
        key = (p.socket_name, p.socket_path, p.session)
        per_session[key] = per_session.get(key, 0) + 1
    taken: set[str] = set()
    for p in panes:
        shared = per_session[(p.socket_name, p.socket_path, p.session)] > 1
        base = _valid_id(f"{p.session}-{p.window}" if shared else p.session) or p.program
        agent_id, n = base, 1
        while agent_id in taken:
            n += 1
            agent_id = f"{base[:60]}-{n}"
        taken.add(agent_id)
        p.id = agent_id


def _valid_id(text: str) -> str:
    """text with what an agent id cannot hold replaced by '-', from its first letter or digit, at most 64 long."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).lstrip("_.-")[:64]
    return cleaned if AGENT_ID.match(cleaned) else ""
