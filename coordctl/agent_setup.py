"""The set-up snippets that ``--print-config`` prints, for people to paste into their agents' settings.

``coordctl mcp --print-config CLIENT`` gives each MCP client's own way of adding a stdio server (the
``claude mcp add`` command; Codex's ``config.toml`` table ``[mcp_servers.NAME]``; the ``mcpServers``
object of Cursor's ``.cursor/mcp.json`` and of Gemini CLI's ``settings.json``), and ``coordctl hook
claude-code --print-config`` the ``hooks`` block of Claude Code's ``settings.json``. Each names
coordctl by its absolute path when it can be found, since agents start servers and hooks without the
user's shell (and its PATH).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys

import msgspec

SERVER_NAME = "coordd"  # the name the MCP server is registered under in each client
# Where each snippet goes (the CLI says so on stderr, so that stdout is the snippet alone, valid as it is).
WHERE = {
    "claude-code": "run in the agent's project directory (add --scope user for every project)",
    "codex": "add to ~/.codex/config.toml",
    "cursor": "merge into .cursor/mcp.json in the project (or ~/.cursor/mcp.json)",
    "gemini": "merge into ~/.gemini/settings.json (or .gemini/settings.json in the project)",
    "hooks": "merge into .claude/settings.json in the project (or ~/.claude/settings.json)",
}
MCP_CLIENTS = ("claude-code", "codex", "cursor", "gemini")
HOOK_TIMEOUT_S = 10  # the timeout Claude Code gives the hook command (its default is 60 s); it answers far sooner


def coordctl_path() -> str:
    """This coordctl's absolute path: the script that runs (argv[0]), else the one on PATH, else the bare name."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "coordctl":
        found = shutil.which(argv0) if os.sep not in argv0 else argv0
        if found:
            return os.path.abspath(found)
    return shutil.which("coordctl") or "coordctl"


def mcp_argv(agent: str, socket_path: str | None) -> list[str]:
    """The arguments that start the MCP server for ``agent`` (after the command)."""
    socket = ["--socket", socket_path] if socket_path else []
    return [*socket, "mcp", "--agent", agent]


def mcp_config(client: str, agent: str, socket_path: str | None, command: str) -> str:
    """The snippet that registers the MCP server with ``client`` (one of MCP_CLIENTS)."""
    args = mcp_argv(agent, socket_path)
    if client == "claude-code":
        return shlex.join(["claude", "mcp", "add", "--transport", "stdio", SERVER_NAME, "--", command, *args]) + "\n"
    if client == "codex":
        # TOML basic strings take JSON's escapes, so a JSON string is a TOML string.
        strings = [msgspec.json.encode(a).decode() for a in args]
        return (
            f"[mcp_servers.{SERVER_NAME}]\n"
            f"command = {msgspec.json.encode(command).decode()}\n"
            f"args = [{', '.join(strings)}]\n"
        )
    return json_text({"mcpServers": {SERVER_NAME: {"command": command, "args": args}}})


def hooks_config(agent: str | None, socket_path: str | None, command: str) -> str:
    """The ``hooks`` block of Claude Code's settings.json: messages on SessionStart and UserPromptSubmit; on Stop
    the agent keeps working while mail waits. Without ``agent`` the hook reads $COORDD_AGENT."""
    argv = [command, *(["--socket", socket_path] if socket_path else []), "hook", "claude-code"]
    if agent is not None:
        argv += ["--agent", agent]

    def entry(*extra: str) -> list[dict[str, object]]:
        return [{"hooks": [{"type": "command", "command": shlex.join([*argv, *extra]), "timeout": HOOK_TIMEOUT_S}]}]

    hooks = {"SessionStart": entry(), "UserPromptSubmit": entry(), "Stop": entry("--continue-on-mail")}
    return json_text({"hooks": hooks})


def json_text(value: object) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n"
