"""`coordctl hook claude-code`: recorded Claude Code hook events (tests/fixtures/claude_code/, in the shape the
hooks reference documents) on stdin, and the output checked against the documented hook output: context on
SessionStart and UserPromptSubmit, a blocked stop while mail waits, and never holding the agent up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import Daemon, wait_until

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"


def hook(socket: str, event: str | bytes, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    data = event if isinstance(event, bytes) else (FIXTURES / f"{event}.json").read_bytes()
    environ = {k: v for k, v in os.environ.items() if k not in ("COORDD_SOCKET", "COORDD_AGENT")}
    return subprocess.run(
        [sys.executable, "-m", "coordctl", "--socket", socket, "hook", "claude-code", *args],
        input=data,
        capture_output=True,
        timeout=60,
        env={**environ, **(env or {})},
    )


def context_of(out: subprocess.CompletedProcess, event: str) -> str:
    """The additionalContext of a SessionStart/UserPromptSubmit answer, its shape checked as documented."""
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert set(answer) == {"hookSpecificOutput"}
    specific = answer["hookSpecificOutput"]
    assert set(specific) == {"hookEventName", "additionalContext"} and specific["hookEventName"] == event
    assert isinstance(specific["additionalContext"], str)
    return specific["additionalContext"]


def test_prompt_and_session_start_add_unread_messages_once(daemon: Daemon):
    with daemon.client() as c:
        first = c.send("Agent-1", "Please rebase onto main", sender="Agent-2", subject="rebase", wait=True)
        second = c.send("Agent-1", "CI is red on checkout", sender="Agent-3", priority="urgent", wait=True)
        context = context_of(hook(daemon.socket, "user_prompt_submit", "--agent", "Agent-1"), "UserPromptSubmit")
        assert f"#{first}" in context and f"#{second}" in context
        assert "Please rebase onto main" in context and "from Agent-2" in context and "subject: rebase" in context
        assert "urgent" in context and "agent Agent-1" in context
        assert all(m.read_at is not None for m in (c.get(first).message, c.get(second).message))
        again = hook(daemon.socket, "user_prompt_submit", "--agent", "Agent-1")  # read now: nothing to add
        assert (again.returncode, again.stdout, again.stderr) == (0, b"", b"")

        third = c.send("Agent-1", "Welcome back", sender="Agent-4", wait=True)
        context = context_of(hook(daemon.socket, "session_start", env={"COORDD_AGENT": "Agent-1"}), "SessionStart")
        assert f"#{third}" in context and "Welcome back" in context and f"#{first}" not in context


def test_stop_blocks_while_mail_waits_with_continue_on_mail(daemon: Daemon):
    with daemon.client() as c:
        plain = hook(daemon.socket, "stop", "--agent", "Agent-1", "--continue-on-mail")
        assert (plain.returncode, plain.stdout) == (0, b"")  # no mail: it may stop
        sent = c.send("Agent-1", "One more thing: bump the version", sender="Agent-2", wait=True)
        # Without --continue-on-mail, or once a Stop hook already kept it going, it stops, the mail left unread.
        for out in (
            hook(daemon.socket, "stop", "--agent", "Agent-1"),
            hook(daemon.socket, "stop_active", "--agent", "Agent-1", "--continue-on-mail"),
        ):
            assert (out.returncode, out.stdout) == (0, b"")
        assert c.get(sent).message.read_at is None
        out = hook(daemon.socket, "stop", "--agent", "Agent-1", "--continue-on-mail")
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert set(answer) == {"decision", "reason"} and answer["decision"] == "block"
        assert f"#{sent}" in answer["reason"] and "bump the version" in answer["reason"]
        assert c.get(sent).message.read_at is not None


def test_other_events_add_nothing_and_never_ask_the_daemon(daemon: Daemon):
    with daemon.client() as c:
        sent = c.send("Agent-1", "still unread", wait=True)
        out = hook(daemon.socket, "pre_compact", "--agent", "Agent-1", "--continue-on-mail")
        assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")
        assert c.get(sent).message.read_at is None


def test_daemon_down_or_bad_input_never_blocks(tmp_path):
    down = str(tmp_path / "no-daemon.sock")
    out = hook(down, "user_prompt_submit", "--agent", "Agent-1")
    assert (out.returncode, out.stdout) == (0, b"")
    assert len(out.stderr.decode().strip().splitlines()) == 1 and "unavailable" in out.stderr.decode()
    # Exit 2 would block the prompt in Claude Code: usage errors and unreadable events exit 0 too.
    for out in (
        hook(down, b"{not json", "--agent", "Agent-1"),
        hook(down, "user_prompt_submit"),  # no --agent
        hook(down, "user_prompt_submit", "--agent", "Agent-1", "--no-such-option"),
    ):
        assert (out.returncode, out.stdout) == (0, b""), out.stderr
        assert len(out.stderr.decode().strip().splitlines()) == 1


def test_print_config_is_valid_settings(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "coordctl", "hook", "claude-code", "--print-config", "--agent", "Agent-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    hooks = json.loads(out.stdout)["hooks"]
    assert set(hooks) == {"SessionStart", "UserPromptSubmit", "Stop"}
    for event, groups in hooks.items():
        [command] = groups[0]["hooks"]
        assert command["type"] == "command" and command["timeout"] > 0
        assert command["command"].split()[1:5] == ["hook", "claude-code", "--agent", "Agent-1"]
        assert ("--continue-on-mail" in command["command"]) == (event == "Stop")


def test_a_pull_agents_messages_come_back_unless_acknowledged(make_daemon):
    """A pull agent's message handed to the model is leased: unacknowledged it is handed over again once the
    lease ends (at least once); with --ack the hook acknowledges what it hands over (at most once)."""
    d = make_daemon(agents=[{"id": "P", "transport": "pull"}, {"id": "Q", "transport": "pull"}], pull={"lease_s": 1})
    with d.client() as c:
        leased = c.send("P", "review #7", sender="Q")
        acked = c.send("Q", "review #8", sender="P")
        assert f"#{leased}" in context_of(hook(d.socket, "user_prompt_submit", "--agent", "P"), "UserPromptSubmit")
        assert f"#{acked}" in context_of(hook(d.socket, "session_start", "--agent", "Q", "--ack"), "SessionStart")
        assert c.get(acked).message.acked_at is not None and c.get(leased).message.acked_at is None

        def handed_over_again(agent: str) -> bool:
            out = hook(d.socket, "user_prompt_submit", "--agent", agent, "--ack")
            return bool(out.stdout) and "review" in context_of(out, "UserPromptSubmit")

        wait_until(lambda: handed_over_again("P"), 10, "the leased message once its lease ended")
        assert c.get(leased).message.fetches == 2 and c.get(leased).message.acked_at is not None
    assert hook(d.socket, "user_prompt_submit", "--agent", "Q").stdout == b""  # acked: never again
