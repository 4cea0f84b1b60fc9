"""coordctl's CLI as a person or a script uses it: every command, --json, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import Daemon, wait_until


def cli(
    d: Daemon | None, *args: str, stdin: str | None = None, socket: str | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COORDD_SOCKET"}
    sock = socket or (d.socket if d else "/nonexistent/coordd.sock")
    return subprocess.run(
        [sys.executable, "-m", "coordctl", "--socket", sock, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def ok(d: Daemon, *args: str, stdin: str | None = None) -> str:
    out = cli(d, *args, stdin=stdin)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_every_command(daemon: Daemon, tmp_path):
    assert "protocol 3" in ok(daemon, "ping")
    first = int(ok(daemon, "send", "Agent-1", "hello from the CLI", "--sender", "Agent-2", "--wait").split()[0])
    piped = int(ok(daemon, "send", "Agent-2", "-", "--priority", "urgent", stdin="line one\nline two\n").strip())
    assert "delivered" in ok(daemon, "show", str(first))  # --wait returned, so it is stored as delivered
    wait_until(lambda: (daemon.inbox("Agent-2") / f"{piped:012d}.md").exists(), what="piped message delivered")
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"to": "Agent-3", "body": "b1"}\n\n{"to": "Agent-4", "body": "b2", "priority": "urgent"}\n')
    ids = [int(x) for x in ok(daemon, "batch", str(batch)).split()]
    assert len(ids) == 2
    assert len(ok(daemon, "batch", "-", stdin='{"to": "Agent-1", "body": "from stdin"}\n').split()) == 1
    assert len(ok(daemon, "broadcast", "everyone", "--sender", "Agent-6").split()) == 4
    table = ok(daemon, "agents")
    assert all(f"Agent-{n}" in table for n in range(1, 5)) and "inbox" in table
    wait_until(lambda: '"queued":0' in ok(daemon, "--json", "status").replace(" ", ""), what="deliveries")
    status = ok(daemon, "status")
    assert "Agent-1" in status and "coordd" in status
    history = ok(daemon, "history", "--agent", "Agent-1", "--limit", "10")
    assert "hello from the CLI" in history and "everyone" in history
    shown = ok(daemon, "show", str(piped))
    assert "line one\nline two" in shown and "urgent" in shown and "delivered" in shown
    assert "hello from the CLI" in ok(daemon, "history", "--grep", "from the CLI", "--since", "1h")


def test_json_output_is_parseable(daemon: Daemon):
    mid = json.loads(ok(daemon, "--json", "send", "Agent-1", "json please", "--wait"))
    message_id = mid["id"] if isinstance(mid, dict) else mid
    shown = json.loads(ok(daemon, "--json", "show", str(message_id)))
    assert shown["message"]["body"] == "json please" and shown["message"]["status"] == "delivered"
    page = json.loads(ok(daemon, "--json", "history", "--limit", "1"))
    assert page["messages"][0]["id"] == message_id
    status = json.loads(ok(daemon, "--json", "status"))
    assert [a["id"] for a in status["agents"]] == [f"Agent-{n}" for n in range(1, 5)]
    assert json.loads(ok(daemon, "--json", "agents"))
    assert json.loads(ok(daemon, "--json", "ping"))["protocol"] == 3


def test_retry_and_cancel(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], delivery={"max_attempts": 1, "backoff_initial_ms": 20})
    d.inbox("A").parent.mkdir(parents=True)
    d.inbox("A").write_text("a file where the inbox directory should be: deliveries fail")
    failed = cli(d, "send", "A", "doomed", "--wait", "--timeout", "10")
    assert failed.returncode == 1 and "not_delivered" in failed.stderr
    [doomed] = json.loads(ok(d, "--json", "history", "--status", "failed"))["messages"]
    d.inbox("A").unlink()
    assert "queued" in ok(d, "retry", str(doomed["id"]))
    wait_until(lambda: "delivered" in ok(d, "show", str(doomed["id"])), what="the retried message")
    again = cli(d, "retry", str(doomed["id"]))
    assert again.returncode == 1 and "bad_state" in again.stderr


def test_cancel(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], delivery={"max_attempts": 1000, "backoff_initial_ms": 20})
    d.inbox("A").parent.mkdir(parents=True)
    d.inbox("A").write_text("a file where the inbox directory should be: deliveries fail")
    ok(d, "send", "A", "stuck at the head")
    behind = ok(d, "send", "A", "to cancel").strip()
    assert "cancelled" in ok(d, "cancel", behind)
    refused = cli(d, "cancel", behind)
    assert refused.returncode == 1 and "bad_state" in refused.stderr
    assert json.loads(ok(d, "--json", "show", behind))["message"]["status"] == "cancelled"


def test_exit_codes(daemon: Daemon, tmp_path):
    refused = cli(daemon, "send", "Agent-99", "hi")
    assert refused.returncode == 1 and "unknown_agent" in refused.stderr and "Agent-99" in refused.stderr
    empty = cli(daemon, "send", "Agent-1", "   ")
    assert empty.returncode == 1 and "bad_request" in empty.stderr
    missing = cli(daemon, "show", "424242")
    assert missing.returncode == 1 and "unknown_message" in missing.stderr
    usage = cli(daemon, "send", "Agent-1")
    assert usage.returncode == 2
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"to": "Agent-1", "body": "fine"}\n{"to": "Agent-1", "bodyy": "typo"}\n')
    bad = cli(daemon, "batch", str(bad_line))
    assert bad.returncode == 2 and "2" in bad.stderr
    down = cli(None, "ping")
    assert down.returncode == 3
    assert len(down.stderr.strip().splitlines()) == 1 and "coordd run" in down.stderr


def test_send_builds_only_its_own_command(daemon):
    """`coordctl send`, the command agents run most, does not build the other ~40 subcommands (coordctl.cli):
    that was a third of its cost above `import click, msgspec` (perf/README.md). Any other command loads them."""
    code = (
        "import sys\nfrom coordctl.cli_base import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('coordctl.cli' in sys.modules)"
    )
    for args, loaded in ((["send", "Agent-1", "hi"], "False"), (["ping"], "True")):
        out = subprocess.run(
            [sys.executable, "-c", code, "--socket", daemon.socket, *args], capture_output=True, text=True, timeout=60
        )
        assert out.stdout.splitlines()[-1] == loaded and not out.stderr, (args, out.stdout, out.stderr)


def test_cli_imports_stay_thin():
    code = (
        # The hook runs on every prompt of an agent: it stays as thin as the CLI. The mcp extra is `coordctl mcp`'s.
        "import sys, coordctl.cli, coordctl.claude_hook, coordctl.agent_setup; heavy = {'asyncio', 'uvloop', "
        "'aiosqlite', 'pyautogui', 'prometheus_client', 'coordd', 'json', 'mcp', 'mcp_types', 'anyio', 'pydantic', "
        "'typing_extensions', 'nats'} "
        "& set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
