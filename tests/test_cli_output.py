"""coordctl's output for people and scripts: a status that fits the terminal, colour only on a terminal,
plurals, --json on either side of the subcommand, JSON errors, times with their UTC offset, and shell
completion of agent ids."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from datetime import datetime

from conftest import wait_until

LONG_ID = "frontend-reviewer-with-a-long-name"
ESC = "\x1b["


def env_for(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COORDD_SOCKET", "COLUMNS", "NO_COLOR")}
    return {**env, **extra}


def ctl(d, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "coordctl", "--socket", d.socket, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_for(**env),
    )


def on_a_terminal(d, *args: str, **env: str) -> tuple[int, str]:
    """coordctl with its stdout on a pseudo-terminal (as a person runs it): its exit code and output."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordctl", "--socket", d.socket, *args],
        stdout=terminal,
        stderr=subprocess.PIPE,
        env=env_for(**env),
    )
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], deadline - time.monotonic())
        if not ready:
            break
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal's other end
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    return proc.wait(timeout=60), out.decode()


def failing_daemon(make_daemon):
    """Three agents, one with a long id, and one failed message (an inbox that cannot be written) whose
    LAST ERROR is long: a table that needs about 200 columns."""
    d = make_daemon(agents=[{"id": "A"}, {"id": LONG_ID}, {"id": "C"}], delivery={"max_attempts": 1}, start=False)
    d.inbox("A").parent.mkdir(parents=True, exist_ok=True)
    d.inbox("A").write_text("a file where the inbox directory should be: every delivery fails")
    d.start()
    with d.client() as c:
        doomed = c.send("A", "cannot be written")
        c.send(LONG_ID, "fine", wait=True)
        wait_until(lambda: c.get(doomed).message.status == "failed", what="the message to fail")
    return d


def table_of(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("AGENT"))
    return lines[start : start + 4]


def test_status_fits_80_and_200_columns(make_daemon):
    d = failing_daemon(make_daemon)
    wide = ctl(d, "status", COLUMNS="200")
    assert wide.returncode == 4, wide.stderr
    assert all(len(line) <= 200 for line in wide.stdout.splitlines()), wide.stdout
    header = table_of(wide.stdout)[0]
    for column in ("AGENT", "TRANSPORT", "HEALTH", "QUEUED", "IN FLIGHT", "DELIVERED", "FAILED", "P50", "P99"):
        assert column in header
    assert "OLDEST" in header and "LAST ERROR" in header
    assert table_of(wide.stdout)[1].split()[-2:] != ["-", "-"]  # A's last error (cut to fit, maybe)
    assert "(P50, P99: time from accepted" in wide.stdout

    narrow = ctl(d, "status", COLUMNS="80")
    assert narrow.returncode == 4
    # (but a path, which is never cut: the test's socket and store paths are long)
    fits = [line for line in narrow.stdout.splitlines() if not line.startswith(("socket /", "store /"))]
    assert all(len(line) <= 80 for line in fits), narrow.stdout
    table = table_of(narrow.stdout)
    header = table[0].split()
    assert header[:4] == ["AGENT", "HEALTH", "QUEUED", "FAILED"]  # the columns that always stay
    assert "P50" not in header and "TRANSPORT" not in header  # the first ones left out
    assert table[1].split()[:4] == ["A", "ok", "0", "1"] and table[2].split()[:4] == [LONG_ID, "ok", "0", "0"]
    assert "(P50" not in narrow.stdout  # its note goes with it
    # Into a pipe without $COLUMNS, nothing is cut: scripts that grep see it all.
    piped = ctl(d, "status")
    assert "TRANSPORT" in piped.stdout and "P50" in piped.stdout and "is not a directory" in piped.stdout


def test_status_plurals(make_daemon):
    d = failing_daemon(make_daemon)
    shown = ctl(d, "status")
    assert "A has 1 failed message:" in shown.stdout and "failed messages" not in shown.stdout
    assert re.search(r"\b2 rows\b", shown.stdout)
    with d.client() as c:
        second = c.send("A", "cannot be written either")
        wait_until(lambda: c.get(second).message.status == "failed", what="the second to fail")
    assert "A has 2 failed messages:" in ctl(d, "status").stdout


def test_colour_on_a_terminal_only_and_never_with_no_color(make_daemon):
    d = failing_daemon(make_daemon)
    code, out = on_a_terminal(d, "status", COLUMNS="200")
    assert code == 4
    row_a = next(line for line in out.splitlines() if line.startswith("A "))
    assert f"{ESC}32mok{ESC}0m" in row_a and f"{ESC}31m1{ESC}0m" in row_a  # health green, failures red
    assert ESC not in table_of(out)[0]  # the header is plain
    code, out = on_a_terminal(d, "status", COLUMNS="200", NO_COLOR="1")
    assert code == 4 and ESC not in out and "A " in out
    assert ESC not in ctl(d, "status").stdout  # not a terminal


def test_json_before_or_after_the_subcommand(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    before, after = ctl(d, "--json", "status"), ctl(d, "status", "--json")
    assert before.returncode == after.returncode == 0
    first, second = json.loads(before.stdout), json.loads(after.stdout)
    assert [a["id"] for a in first["agents"]] == [a["id"] for a in second["agents"]] == ["A", "B"]
    sent = ctl(d, "send", "A", "hello", "--json")
    assert sent.returncode == 0 and isinstance(json.loads(sent.stdout)["id"], int)
    listed = ctl(d, "agents", "list", "--json")
    assert [a["id"] for a in json.loads(listed.stdout)["agents"]] == ["A", "B"]
    # After `--` it is the message, not the flag.
    literal = ctl(d, "send", "A", "--", "--json")
    assert literal.returncode == 0 and literal.stdout.strip().isdigit()
    with d.client() as c:
        assert c.get(int(literal.stdout)).message.body == "--json"


def error_of(run: subprocess.CompletedProcess) -> dict:
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    return json.loads(lines[0])


def test_errors_are_json_under_json_with_the_same_exit_codes(make_daemon, tmp_path):
    d = make_daemon(agents=[{"id": "Agent-1"}])
    for args in (("--json", "send", "Nobody", "hi"), ("send", "Nobody", "hi", "--json")):
        refused = ctl(d, *args)
        assert refused.returncode == 1 and refused.stdout == ""
        error = error_of(refused)
        assert error["code"] == "unknown_agent" and "Nobody" in error["message"]
    plain = ctl(d, "send", "Nobody", "hi")
    assert plain.returncode == 1 and plain.stderr.startswith("error [unknown_agent]: ")

    usage = ctl(d, "status", "--bogus", "--json")
    assert usage.returncode == 2 and error_of(usage)["code"] == "usage" and "--bogus" in error_of(usage)["message"]
    missing = ctl(d, "--json", "send", "Agent-1")
    assert missing.returncode == 2 and error_of(missing)["code"] == "usage"

    away = subprocess.run(
        [sys.executable, "-m", "coordctl", "--socket", str(tmp_path / "none.sock"), "ping", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_for(),
    )
    assert away.returncode == 3 and error_of(away)["code"] == "unavailable"


def test_times_carry_their_offset(make_daemon):
    d = make_daemon(agents=[{"id": "A"}])
    kolkata = {"TZ": "Asia/Kolkata"}  # +05:30 all year: an offset no test machine has by accident
    with d.client() as c:
        mid = c.send("A", "what time is it", wait=True)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0530"
    history = ctl(d, "history", **kolkata)
    assert re.search(rf"^{mid}\s+{stamp}\s", history.stdout, re.M), history.stdout
    shown = ctl(d, "show", str(mid), **kolkata)
    assert re.search(rf"^created:\s+{stamp}$", shown.stdout, re.M) and re.search(
        rf"^delivered:\s+{stamp}$", shown.stdout, re.M
    )
    inbox = ctl(d, "inbox", "A", **kolkata)
    assert re.search(rf"^--- #{mid}  {stamp}", inbox.stdout, re.M), inbox.stdout

    message = json.loads(ctl(d, "show", str(mid), "--json", **kolkata).stdout)["message"]
    for field in ("created", "delivered"):
        when = datetime.fromisoformat(message[f"{field}_iso"])
        assert message[f"{field}_iso"].endswith("+05:30") and abs(when.timestamp() - message[field]) < 1e-5
    assert message["acked_at"] is None and message["acked_at_iso"] is None
    page = json.loads(ctl(d, "--json", "history").stdout)
    assert page["messages"][0]["created_iso"] and isinstance(page["messages"][0]["created"], float)


def complete(d, words: str, socket: str | None = None) -> subprocess.CompletedProcess:
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    return subprocess.run(
        [sys.executable, "-m", "coordctl"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_for(
            _COORDCTL_COMPLETE="bash_complete",
            COMP_WORDS=words,
            COMP_CWORD=str(cword),
            COORDD_SOCKET=socket or d.socket,
        ),
    )


def test_shell_completion_of_agent_ids(make_daemon, tmp_path):
    d = make_daemon(agents=[{"id": "Agent-1", "groups": ["reviewers"]}, {"id": "Agent-2"}, {"id": "Other"}])
    done = complete(d, "coordctl send Ag")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.split() == ["plain,Agent-1", "plain,Agent-2"]
    assert complete(d, "coordctl send @").stdout.split() == ["plain,@reviewers"]
    assert complete(d, "coordctl history --agent O").stdout.split() == ["plain,Other"]
    # The daemon is not running: no candidates and no error (a hang would be the subprocess's timeout).
    away = complete(d, "coordctl inbox ", socket=str(tmp_path / "none.sock"))
    assert away.returncode == 0 and away.stdout.split() == [] and away.stderr == ""
    source = subprocess.run(
        [sys.executable, "-m", "coordctl"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_for(_COORDCTL_COMPLETE="zsh_source"),
    )
    assert source.returncode == 0 and "_COORDCTL_COMPLETE" in source.stdout
