"""`coordd init`: a commented starting config, written where `coordd run` looks for one.

The file lists every section's keys with their defaults, commented out (taken from the config structs, so
they cannot drift), then the agents: the panes `--discover` found, or, without any, the eight inbox agents
coordd serves with no config. It is checked with the same parser `coordd run` uses before it is written,
and written as a new file only: 0600, never through a link, never over an existing file.
"""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from pathlib import Path

import msgspec

from coordd import config as c
from coordd.discover import Pane

SECTIONS = ("daemon", "store", "retention", "queue", "delivery")  # those listed with their defaults

HEADER = """\
# coordd config, written by `coordd init` on {date}.
# Every key, what it does and its default: config.example.toml in coordd's source. The keys commented
# out below show the defaults; uncomment one to change it. Check an edit with `coordd check-config`; a
# running daemon takes it with `coordctl reload` (or SIGHUP; a few keys need a restart, reload says which).
"""

TMUX_EXAMPLE = """\
# An agent in a tmux pane (`coordd init --discover` finds those running an agent CLI):
# [[agents]]
# id = "claude-1"
# transport = "tmux"
# target = "work:0.0"        # session:window.pane
# socket_name = "agents"     # tmux -L, when it is not the default server
"""


class InitError(Exception):
    """The config was not written, and why (with what to do instead)."""


def render(panes: list[Pane]) -> str:
    """The config text: the defaults commented out, then the found panes' agents, or the default inbox agents."""
    defaults = c.parse(c.embedded_default(), "<embedded default>")  # the paths filled in as coordd would
    lines = [HEADER.format(date=time.strftime("%Y-%m-%d %H:%M %Z"))]
    for name in SECTIONS:
        lines.append(f"[{name}]")
        for key, value in msgspec.to_builtins(getattr(defaults, name)).items():
            lines.append(f"# {key} = {toml_value(value)}")
        lines.append("")
    if panes:
        for p in panes:
            found = f"{p.program} in pane {p.pane_id} of tmux server {p.server()}, window {toml_value(p.window)}"
            lines.append(f"# found: {comment(found)}")
            if p.target == p.pane_id:
                lines.append(f"# (by pane id: session {toml_value(p.session)} cannot be named in a target)")
            lines += [
                "[[agents]]",
                f"id = {toml_value(p.id)}",
                'transport = "tmux"',
                f"target = {toml_value(p.target)}",
            ]
            if p.socket_name:
                lines.append(f"socket_name = {toml_value(p.socket_name)}")
            if p.socket_path:
                lines.append(f"socket_path = {toml_value(p.socket_path)}")
            lines.append("")
    else:
        workspace = defaults.daemon.workspace
        lines.append(f"# Agents that get each message as a file in {workspace}/agent_workspaces/<id>/inbox/")
        for a in c.embedded_default()["agents"]:
            lines += ["[[agents]]", f"id = {toml_value(a['id'])}", 'transport = "inbox"', ""]
        lines.append(TMUX_EXAMPLE)
    return "\n".join(lines).rstrip("\n") + "\n"


def comment(text: str) -> str:
    """text for a TOML comment, which may hold no control character (a newline would end it)."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    return json.dumps(value)


def write(path: Path, text: str) -> None:
    """Write text as a new file at path: 0600, its directory made (0700) if missing. Never over an existing
    file, never through a link (O_EXCL | O_NOFOLLOW): InitError says what is there and what to do."""
    c.parse(tomllib.loads(text), str(path))  # what `coordd run` would read; a ConfigError is a bug here
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        what = "a symbolic link" if path.is_symlink() else "a file"
        raise InitError(
            f"{path} is already there ({what}): coordd init never replaces it. Edit it, or move it away and run "
            "coordd init again, or write the new config elsewhere with --config PATH (then run coordd with "
            "--config PATH, or COORDD_CONFIG=PATH)"
        ) from None
    except OSError as e:
        raise InitError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
