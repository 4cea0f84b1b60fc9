"""The tmux transport against a real tmux server: panes run tmux_reader.py (or cat), coordd runs as a subprocess.

How messages are told apart: each pane runs tmux_reader.py, a raw-mode input
line with bracketed paste (like the agent CLIs it stands in for), which appends
one JSON line per Enter to its file. Its agents that get multi-line texts are
configured multiline = "paste", as an agent CLI that takes bracketed paste is
on a tmux that cannot report the mode (before 3.7). So a multi-line message is
one record, and the test checks per file: exactly that agent's messages, each
sender's in order, none missing, none twice. test_cat_receives_hostile_text_literally
covers a program without bracketed paste (`cat >> FILE`), where the file must
hold the exact text, each message on one line.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

import pytest
from conftest import concurrently, wait_until, write_config
from figures import record
from tmux_fixtures import READER, TmuxServer, records

from coordd import config
from coordd.model import Record, TransportDown
from coordd.transports import tmux_control
from coordd.transports.tmux import TmuxTransport, exact_target, printable, tail_fragment

JOINED = " \u23ce "  # " ⏎ ": what multiline "join" shows in place of each newline
FAST_RETRY = {"backoff_initial_ms": 20, "backoff_max_ms": 100, "unhealthy_recheck_ms": 50}
HOSTILE = [
    "quotes ' \" `back` and ; semicolons ; ls",
    "$(touch /tmp/coordd-tmux-test-pwned) ${HOME} $HOME ~ ~/x \\$ \\\\ \\n \\",
    "-t %0 --help -- #{pane_id} #[fg=red] %if 1",
    "unicode: ü 日本語 עברית 🎉 e\u0301 \u200b",
    "{ braces } \\; ;; &&& ||| > /dev/null < x | cat",
]


@pytest.fixture
def tmux_server():
    servers: list[TmuxServer] = []

    def make(socket_name: str = "") -> TmuxServer:
        servers.append(TmuxServer(socket_name))
        return servers[-1]

    yield make
    for s in servers:
        s.kill()
        shutil.rmtree(s.dir, ignore_errors=True)


def tmux_agent(agent_id: str, server: TmuxServer, target: str, **keys) -> dict:
    return {"id": agent_id, "transport": "tmux", "target": target, **server.agent_keys(), **keys}


def header(sender: str, to: str, priority: str = "REGULAR") -> str:
    return f"[A2A] {sender} -> {to} | {priority}"


def log_errors(d) -> list[str]:
    """The daemon's ERROR lines (a transport bug is logged with its traceback; a reply nobody collected too)."""
    return [line[:800] for line in d.logtext().splitlines() if " ERROR " in line or "Traceback" in line]


def delivered(c, n: int) -> bool:
    return len(c.history(status="delivered", limit=1000).messages) >= n


# --- config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys, error",
    [
        ({"target": "-t"}, "agents[0].target"),
        ({"target": "a:0.0; kill-server"}, "agents[0].target"),
        ({"target": "a b:0"}, "agents[0].target"),
        ({"target": "a:0.0", "socket_name": "x", "socket_path": "/tmp/x"}, "not both"),
        ({"target": "a:0.0", "socket_name": "-x"}, "agents[0].socket_name"),
        ({"target": "a:0.0", "socket_path": "rel/sock"}, "agents[0].socket_path"),
        ({"target": "a:0.0", "header": "{body}"}, "agents[0].header"),
        ({"target": "a:0.0", "idle_prompt": "(["}, "agents[0].idle_prompt"),
        ({"target": "a:0.0", "enter_delay_ms": -1}, "agents[0].enter_delay_ms"),
        ({"target": "a:0.0", "submit_timeout_ms": 0}, "agents[0].submit_timeout_ms"),
        ({"target": "a:0.0", "idle_timeout": "shrug"}, "idle_timeout"),
        ({"target": "a:0.0", "enter_delay": 5}, "enter_delay"),
        ({"target": "a:0.0", "multiline": "lines"}, "`agents[0].multiline` = 'lines': use \"join\""),
        ({"target": "a:0.0", "newline_key": "Entr"}, "agents[0].newline_key"),
        ({"target": "a:0.0", "newline_key": "-"}, "agents[0].newline_key"),
        ({"target": "a:0.0", "newline_key": "C-j; kill-server"}, "agents[0].newline_key"),
    ],
)
def test_config_errors_name_the_key(keys, error):
    with pytest.raises(config.ConfigError) as e:
        config.parse({"agents": [{"id": "A", "transport": "tmux", **keys}]}, "c.toml")
    assert error in str(e.value)


@pytest.mark.parametrize("key", ["C-j", "M-Enter", "S-Enter", "C-M-j", "F5", "Escape", "\\"])
def test_config_accepts_newline_keys(key):
    config.parse({"agents": [{"id": "A", "transport": "tmux", "target": "a:0", "newline_key": key}]}, "c.toml")


@pytest.mark.parametrize("target", ["agents:0.1", "agents:editor.0", "%12", "$1:@2.%3", "=a:=b.0", "my-sess", "s:w"])
def test_config_accepts_targets(target):
    config.parse({"agents": [{"id": "A", "transport": "tmux", "target": target}]}, "c.toml")


def test_exact_target_text_and_tail():
    assert exact_target("a1:0.0") == "=a1:=0.0"
    assert exact_target("a1:editor") == "=a1:=editor"
    assert exact_target("%3") == "%3" and exact_target("$1:@2.1") == "$1:@2.1" and exact_target("a") == "=a"
    assert printable("a\r\nb\rc\x1b[201~\x03\x7f\x85\t") == "a\nb\nc^[[201~^C^?<U+0085>\t"
    assert tail_fragment("head\n  some   spaced\ttext \n\n  ") == "some spaced text"
    assert tail_fragment("x" * 40) == "x" * 16 and tail_fragment(" \n\t") == ""


# --- the control connection ---------------------------------------------------------


async def test_control_mode_quoting_keeps_hostile_text_literal(tmux_server, tmp_path):
    """Every string goes through tmux's command parser and comes back byte for byte (set-buffer, save-buffer)."""
    server = tmux_server()
    server.session("q", "cat")
    texts = [*HOSTILE, "multi\nline\r\n\ttabbed", "\x1b[31mred\x1b[0m \x07 \x7f", "'", '"', "\\", "-", ";", "~", "$"]
    conn = tmux_control.acquire(tmux_control.server_args("", server.socket_path))
    try:
        for n, text in enumerate(texts):
            out = tmp_path / f"buf{n}"
            await conn.run_many(("set-buffer", "-b", f"t{n}", "--", text), ("save-buffer", "-b", f"t{n}", str(out)))
            assert out.read_bytes() == text.encode(), text
        with pytest.raises(tmux_control.TmuxError, match="can't find pane"):
            await conn.run("send-keys", "-t", "%999", "x")
        assert await conn.run("display-message", "-p", "still #{session_name}") == ["still q"]
    finally:
        await tmux_control.release(conn)


async def test_the_control_clients_session_destroyed_under_a_delivery_names_the_pane(tmux_server):
    """tmux detaches a control client whose session is destroyed (detach-on-destroy) while the server runs
    on: a delivery that wrote to it sees the connection close. The reason must say the pane is gone, not the
    server (a fresh-clone CI run reported "not reachable" here)."""
    server = tmux_server()
    server.session("keep", "sleep", "600")
    server.session("t", "cat")  # the newest session: the control client attaches to it
    transport = TmuxTransport(config.TmuxAgent(id="T", target="t:0.0", socket_path=server.socket_path))
    await transport.start()
    try:
        # A blocking call: the control client exits before the loop runs again, so the delivery below writes
        # to it before its reader has seen the end.
        server.tmux("kill-session", "-t", "=t")
        with pytest.raises(TransportDown) as down:
            await transport.deliver([Record(1, "T", "hello", "regular", 0.0)])
        assert down.value.reason.startswith("tmux pane t:0.0 not found"), down.value.reason
        assert down.value.delivered == 0
    finally:
        await transport.close()


# --- delivery through the daemon ----------------------------------------------------------


def test_four_agents_eight_concurrent_clients(make_daemon, tmux_server, tmp_path):
    server = tmux_server()
    agents = ["T1", "T2", "T3", "T4"]
    files = {a: tmp_path / f"{a}.jsonl" for a in agents}
    for n, a in enumerate(agents):
        server.reader(f"s{n}", files[a])
    d = make_daemon(agents=[tmux_agent(a, server, f"s{n}:0.0", multiline="paste") for n, a in enumerate(agents)])
    per_client = 50

    def body(c: int, i: int) -> str:
        text = f"c{c} m{i} " + HOSTILE[i % len(HOSTILE)]
        return text + f"\nsecond line of c{c} m{i}\n\n  indented after a blank line" if i % 3 == 0 else text

    def client(c: int) -> None:
        with d.client() as cl:
            for i in range(per_client):
                cl.send(agents[(c + i) % 4], body(c, i), sender=f"client-{c}")

    concurrently(8, client)
    with d.client() as c:
        wait_until(lambda: delivered(c, 8 * per_client), 60, "all 400 deliveries")
        assert c.status().queued == 0
    for k, a in enumerate(agents):
        got = [r["text"] for r in records(files[a])]
        for c in range(8):  # exactly this sender's messages to this agent, in the order it sent them
            mine = [t for t in got if t.startswith(header(f"client-{c}", a) + "\n")]
            assert mine == [f"{header(f'client-{c}', a)}\n{body(c, i)}" for i in range(per_client) if (c + i) % 4 == k]
        assert len(got) == 8 * per_client // 4, f"{a}: foreign or malformed messages"
    # One warm control-mode connection serves all four agents on this server; it ends with the daemon.
    assert server.tmux("list-clients", "-F", "#{client_control_mode}").stdout.split() == ["1"]
    assert d.stop() == 0
    wait_until(lambda: server.tmux("list-clients").stdout == "", 5, "the control client to detach")
    assert log_errors(d) == []


def test_cat_receives_hostile_text_literally(make_daemon, tmux_server, tmp_path):
    """A program without bracketed paste: the text reaches `cat` as typed, each message one line (multiline
    "join": a newline would be an Enter)."""
    server = tmux_server()
    out = tmp_path / "cat.txt"
    out.touch()
    pane = server.session("c", "sh", "-c", f"exec cat >> '{out}'")  # the pane runs cat, not a shell
    bodies = [*HOSTILE, "two\nlines", "esc \x1b[201~ \x1b]0;title\x07 nul \x00 end"]
    d = make_daemon(agents=[tmux_agent("C", server, pane, header="")])
    with d.client() as c:
        for body in bodies:
            c.send("C", body, wait=True, timeout=10)
    want = "".join(printable(b).replace("\n", JOINED) + "\n" for b in bodies)
    assert "^[[201~ ^[]0;title^G nul ^@ end" in want
    wait_until(lambda: out.read_text(encoding="utf-8") == want, 5, "cat's file to hold exactly the texts")
    assert not Path("/tmp/coordd-tmux-test-pwned").exists()


# --- a message is one input: multiline = "join" | "paste" | "keys" -------------------------------

# Python's input() with readline: line editing, and no bracketed paste (CPython turns it off), so each newline
# of a paste is an Enter. Each input it reads becomes one line of its file.
READLINE_PROGRAM = """import readline, sys
out = open(sys.argv[1], "a", encoding="utf-8")
while True:
    out.write(input("> ") + "\\n")
    out.flush()
"""


def lines_when(path: Path, n: int) -> list[str] | None:
    text = path.read_text(encoding="utf-8")
    return text.splitlines() if text.count("\n") >= n else None


@pytest.mark.parametrize("program", ["cat", "readline"])
def test_a_multi_line_message_is_one_input_to_a_program_without_bracketed_paste(
    make_daemon, tmux_server, tmp_path, program
):
    """Each newline of a paste reaches cat or readline as Enter: `hi\\n/exit` used to be two inputs, the second
    a command. By default (multiline = "join") the message is one line, its newlines shown as " ⏎ "."""
    server = tmux_server()
    out = tmp_path / "input.txt"
    out.touch()
    if program == "cat":
        pane = server.session("p", "sh", "-c", f"exec cat >> '{out}'")  # the pane runs cat, not a shell
    else:
        pane = server.session("p", sys.executable, "-c", READLINE_PROGRAM, str(out))
        wait_until(lambda: server.capture(pane).strip(), 10, "the readline prompt")
    d = make_daemon(agents=[tmux_agent("P", server, pane)])  # the default header: a message is always 2+ lines
    with d.client() as c:
        c.send("P", "hi\n/exit", sender="A", wait=True, timeout=10)
        c.send("P", "next\r\nline", sender="A", wait=True, timeout=10)
    got = wait_until(lambda: lines_when(out, 2), 5, "two inputs")
    assert got == [f"{header('A', 'P')}{JOINED}hi{JOINED}/exit", f"{header('A', 'P')}{JOINED}next{JOINED}line"]
    record(
        "hardening_multiline",
        hardening="a 2-line message to a pane without bracketed paste",
        outcome="one input line, newlines shown as \u23ce",
    )


def bracket_paste_known(server: TmuxServer, target: str) -> bool:
    """Whether this tmux reports a pane's bracketed paste mode (#{bracket_paste_flag}, tmux 3.7 and newer)."""
    return server.tmux("display-message", "-p", "-t", target, "#{bracket_paste_flag}").stdout.strip() != ""


def test_a_program_with_bracketed_paste_gets_the_message_as_one_block(make_daemon, tmux_server, tmp_path):
    """tmux_reader asks for bracketed paste: "paste" sends the lines as one block, newlines kept, one input.
    "join" does the same where tmux tells the pane asked for it (3.7+), and joins the lines where it cannot."""
    server = tmux_server()
    joins, pastes = tmp_path / "j.jsonl", tmp_path / "p.jsonl"
    server.reader("j", joins)
    server.reader("p", pastes)
    d = make_daemon(
        agents=[tmux_agent("J", server, "j:0", header=""), tmux_agent("P", server, "p:0", header="", multiline="paste")]
    )
    with d.client() as c:
        for agent in ("J", "P"):
            c.send(agent, "hi\n/exit", wait=True, timeout=10)
    assert [r["text"] for r in records(pastes)] == ["hi\n/exit"]
    joined = "hi\n/exit" if bracket_paste_known(server, "=j:0") else f"hi{JOINED}/exit"
    assert [r["text"] for r in records(joins)] == [joined]


@pytest.mark.parametrize("newline_key", ["C-j", "M-Enter"])
def test_keys_types_each_line_then_the_newline_key(make_daemon, tmux_server, tmp_path, newline_key):
    """A program without bracketed paste whose newline key (C-j, M-Enter) starts a new line without submitting:
    "keys" gives it one input with its newlines; "paste" gives one input per line; "join" one joined line."""
    server = tmux_server()
    files = {mode: tmp_path / f"{mode}.jsonl" for mode in ("keys", "paste", "join")}
    for mode, out in files.items():
        server.reader(mode, out, "--no-bracketed-paste")
    d = make_daemon(
        agents=[
            tmux_agent(mode, server, f"{mode}:0", header="", multiline=mode, newline_key=newline_key) for mode in files
        ]
    )
    with d.client() as c:
        for mode in files:
            c.send(mode, "hi\n\n/exit", wait=True, timeout=10)
    texts = {mode: [r["text"] for r in records(out)] for mode, out in files.items()}
    assert texts == {"keys": ["hi\n\n/exit"], "paste": ["hi", "", "/exit"], "join": [f"hi{JOINED}{JOINED}/exit"]}


def test_large_text_goes_through_a_temp_file(make_daemon, tmux_server, tmp_path):
    server = tmux_server()
    out = tmp_path / "big.jsonl"
    server.reader("big", out)
    body = "\n".join(f"line {n}: " + "xyz ü 'q' $x " * 20 for n in range(300))  # ~ 90 KB
    d = make_daemon(agents=[tmux_agent("B", server, "big:0", header="", multiline="paste")])
    with d.client() as c:
        c.send("B", body, wait=True, timeout=30)
        c.send("B", "small after big", wait=True, timeout=10)
    assert [r["text"] for r in records(out)] == [body, "small after big"]
    assert "buffer" not in server.tmux("list-buffers").stdout  # every per-message buffer was pasted and deleted


def test_pane_killed_holds_with_reason_others_unaffected(make_daemon, tmux_server, tmp_path):
    server = tmux_server()
    a_file, b_file = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    server.reader("a", a_file)
    server.reader("ab", b_file)  # "a" is a prefix of "ab": once "a" is gone, its target must not find "ab"
    d = make_daemon(
        agents=[
            tmux_agent("A", server, "a:0.0", multiline="paste"),
            tmux_agent("B", server, "ab:0.0", multiline="paste"),
        ],
        delivery={**FAST_RETRY, "max_attempts": 3},
    )
    with d.client() as c:
        c.send("A", "before", wait=True, timeout=10)
        server.tmux("kill-session", "-t", "=a")
        lost = c.send("A", "after the pane died")
        for i in range(5):
            c.send("B", f"b{i}", sender="x")
        # A missing pane says nothing about the message: A is down with the reason, the message waits, no
        # attempt spent (it used to burn its 3 attempts and end `failed`).
        a = wait_until(
            lambda: next((s for s in c.status().agents if s.id == "A" and not s.healthy), None), 10, "A down"
        )
        assert "tmux pane a:0.0 not found" in (a.reason or "") and "can't find session" in (a.reason or "")
        wait_until(lambda: len(records(b_file)) == 5, 10, "B's deliveries")
        msg = c.get(lost)
        assert (msg.message.status, msg.message.attempts, msg.attempts) == ("queued", 0, [])
        assert [s.healthy for s in c.status().agents] == [False, True]
    assert [r["text"] for r in records(b_file)] == [f"{header('x', 'B')}\nb{i}" for i in range(5)]
    assert [r["text"] for r in records(a_file)] == [f"{header('unknown', 'A')}\nbefore"]
    assert log_errors(d) == []


def test_server_gone_holds_then_reconnects(make_daemon, tmux_server, tmp_path):
    server = tmux_server(
        socket_name=f"coordd-test-{os.getpid()}-{secrets.token_hex(4)}"
    )  # unique: tests may run in parallel
    out = tmp_path / "s.jsonl"
    server.reader("s", out)
    agent = tmux_agent("S", server, "s:0.0", header="", idle_prompt="^> ?$")  # paste once the reader reads
    d = make_daemon(agents=[agent], delivery={**FAST_RETRY, "max_attempts": 2})
    with d.client() as c:
        c.send("S", "one", wait=True, timeout=10)
        server.kill()
        held = c.send("S", "while the server is down")
        # No server says nothing about the message: S is down with the reason, the message waits (no attempt).
        s = wait_until(lambda: next((a for a in c.status().agents if not a.healthy), None), 10, "S down")
        assert "not reachable" in (s.reason or "")  # "server exited unexpectedly", then "no server running"
        assert (c.get(held).message.status, c.get(held).message.attempts) == ("queued", 0)
        server.reader("s", out)  # a new server on the same socket name
        c.send("S", "two", wait=True, timeout=10)
        assert c.get(held).message.attempts == 1
    assert [r["text"] for r in records(out)] == ["one", "while the server is down", "two"]
    assert log_errors(d) == []


@pytest.mark.parametrize("multiline", ["paste", "join", "keys"])
def test_lost_enter_is_pressed_again_without_a_second_paste(make_daemon, tmux_server, tmp_path, multiline):
    server = tmux_server()
    out = tmp_path / "e.jsonl"
    pane = server.reader("e", out, "--ignore-enters", "1")
    agent = tmux_agent("E", server, "e:0.0", header="", submit_timeout_ms=200, multiline=multiline)
    d = make_daemon(agents=[agent], delivery=FAST_RETRY)
    with d.client() as c:
        mid = c.send("E", "first\nsecond", wait=True, timeout=10)
        attempts = c.get(mid).attempts
    assert [a.ok for a in attempts] == [False, True]
    assert attempts[0].error.startswith("text left unsubmitted in tmux pane e:0.0")
    joined = multiline == "join" and not bracket_paste_known(server, pane)
    assert [r["text"] for r in records(out)] == [f"first{JOINED}second" if joined else "first\nsecond"]
    assert server.capture(pane).count("second") == 1


def test_a_reload_that_changes_the_agent_keeps_a_text_waiting_for_its_enter(make_daemon, tmux_server, tmp_path):
    server = tmux_server()
    out = tmp_path / "r.jsonl"
    pane = server.reader("r", out, "--ignore-enters", "1")
    agent = tmux_agent("R", server, "r:0.0", header="", submit_timeout_ms=200)
    slow = {**FAST_RETRY, "backoff_initial_ms": 60_000, "backoff_max_ms": 60_000}  # no retry but the reload's
    d = make_daemon(agents=[agent], delivery=slow)
    with d.client() as c:
        mid = c.send("R", "once only")
        wait_until(lambda: c.get(mid).message.attempts == 1, 10, "the attempt whose Enter was lost")
        assert c.get(mid).message.error.startswith("text left unsubmitted")
        sections = {
            "daemon": {"socket": d.socket, "workspace": str(d.workspace)},
            "store": {"path": d.db},
            "delivery": slow,
        }
        write_config(d.config, sections, [{**agent, "submit_timeout_ms": 300}])
        assert c.reload().changed == ["R"]  # a new transport, which tries again at once
        wait_until(lambda: c.get(mid).message.status == "delivered", 10, "delivery on the new transport")
    assert [r["text"] for r in records(out)] == ["once only"]
    assert server.capture(pane).count("once only") == 1  # Enter again, not a second paste


def test_text_never_submitted_fails(make_daemon, tmux_server, tmp_path):
    server = tmux_server()
    out = tmp_path / "n.jsonl"
    pane = server.reader("n", out, "--ignore-enters", "1000")
    d = make_daemon(
        agents=[tmux_agent("N", server, "n:0.0", header="", submit_timeout_ms=100)],
        delivery={**FAST_RETRY, "max_attempts": 3},
    )
    with d.client() as c:
        mid = c.send("N", "stuck text")
        wait_until(lambda: c.get(mid).message.status == "failed", 10, "the message to fail")
        assert c.get(mid).message.error.startswith("text left unsubmitted")
    assert records(out) == [] and server.capture(pane).count("stuck text") == 1


def test_wait_for_idle(make_daemon, tmux_server, tmp_path):
    """Both panes are busy for 1.5 s after start; only the agent that waits for idle gets its message after."""
    server = tmux_server()
    waits, eager = tmp_path / "w.jsonl", tmp_path / "e.jsonl"
    server.session("other", "cat")  # the daemon's control client attaches before the agents' sessions exist
    d = make_daemon(
        agents=[
            tmux_agent("W", server, "w:0", header="", idle_quiet_ms=200, idle_prompt="^>$"),
            tmux_agent("E", server, "e:0", header=""),
        ]
    )
    server.reader("w", waits, "--busy-ms", "1500")
    server.reader("e", eager, "--busy-ms", "1500")
    with d.client() as c:
        ids = [c.send("E", "eager"), c.send("W", "patient")]
        wait_until(lambda: all(c.get(i).message.status == "delivered" for i in ids), 15, "both deliveries")
    assert records(waits) == [{"text": "patient", "busy": False}]
    assert records(eager) == [{"text": "eager", "busy": True}]  # so the check above can fail


def test_not_idle_in_time_fails_when_asked_to(make_daemon, tmux_server, tmp_path):
    server = tmux_server()
    out = tmp_path / "b.jsonl"
    server.reader("b", out, "--busy-ms", "60000")
    d = make_daemon(
        agents=[tmux_agent("B", server, "b:0", idle_quiet_ms=100, idle_max_wait_ms=300, idle_timeout="fail")],
        delivery={**FAST_RETRY, "max_attempts": 2},
    )
    with d.client() as c:
        mid = c.send("B", "never")
        wait_until(lambda: c.get(mid).message.status == "failed", 10, "the message to fail")
        assert c.get(mid).message.error == "tmux pane b:0 was not idle within 300 ms"
    assert records(out) == []


def test_copy_mode_pane_waits_until_left(make_daemon, tmux_server, tmp_path):
    server = tmux_server()
    out = tmp_path / "m.jsonl"
    server.reader("m", out)
    server.tmux("copy-mode", "-t", "=m:0.0")
    d = make_daemon(agents=[tmux_agent("M", server, "m:0.0", header="")], delivery=FAST_RETRY)
    with d.client() as c:
        mid = c.send("M", "after copy mode")
        # Copy mode says nothing about the message: M is down with the reason, no attempt spent.
        m = wait_until(lambda: next((a for a in c.status().agents if not a.healthy), None), 10, "M down")
        assert "copy mode" in (m.reason or "") and records(out) == [] and c.get(mid).message.attempts == 0
        server.tmux("send-keys", "-t", "=m:0.0", "-X", "cancel")
        wait_until(lambda: c.get(mid).message.status == "delivered", 10, "delivery once copy mode is left")
    assert [r["text"] for r in records(out)] == ["after copy mode"]


# --- a shell in the pane: the agent is not running there ---------------------------------


def agent_row(c, agent_id: str):
    return next(a for a in c.status().agents if a.id == agent_id)


def test_a_shell_in_the_pane_holds_messages_until_the_agent_runs(make_daemon, tmux_server, tmp_path):
    """Typed into a shell, a message would run as a command: nothing is pasted while a shell has the pane,
    even once the idle wait gives up (idle_timeout "deliver"); the agent is down; its messages wait, unattempted."""
    server = tmux_server()
    out, marker = tmp_path / "s.jsonl", tmp_path / "ran-as-a-command"
    pane = server.session("s", "sh")
    agent = tmux_agent("S", server, pane, header="", idle_prompt="^> ?$", idle_max_wait_ms=100)
    d = make_daemon(agents=[agent], delivery=FAST_RETRY)
    body = f"touch {marker}"
    with d.client() as c:
        mid = c.send("S", body)
        wait_until(lambda: "a shell, not the agent" in (agent_row(c, "S").reason or ""), 10, "S down: a shell")
        assert c.get(mid).message.status == "queued" and c.get(mid).message.attempts == 0
        assert c.status().agents[0].healthy is False
        # The agent starts in its pane: the message goes to it, once.
        server.tmux("send-keys", "-t", pane, "-l", f"exec {sys.executable} {READER} {out}")
        server.tmux("send-keys", "-t", pane, "Enter")
        wait_until(lambda: c.get(mid).message.status == "delivered", 10, "delivery once the agent runs")
    # Delivered means the pane took the input; the reader writes it to its file a moment later.
    wait_until(lambda: records(out), 10, "the reader to record the message")
    assert [r["text"] for r in records(out)] == [body]
    assert not marker.exists()


def test_an_agent_that_quits_mid_batch_keeps_the_rest_queued(make_daemon, tmux_server, tmp_path):
    server = tmux_server()
    out = tmp_path / "q.jsonl"
    pane = server.reader("q", out, "--shell-after", "1")
    d = make_daemon(agents=[tmux_agent("Q", server, pane, header="", idle_prompt="^> ?$")], delivery=FAST_RETRY)
    with d.client() as c:
        ids = c.batch([{"to": "Q", "body": f"m{i}"} for i in range(3)])  # one delivery call takes all three
        wait_until(lambda: c.get(ids[0]).message.status == "delivered", 10, "the first, before the agent quit")
        wait_until(lambda: "a shell" in (agent_row(c, "Q").reason or ""), 10, "Q down: a shell")
        assert [(c.get(i).message.status, c.get(i).message.attempts) for i in ids[1:]] == [("queued", 0)] * 2
        server.tmux("send-keys", "-t", pane, "-l", f"exec {sys.executable} {READER} {out}")
        server.tmux("send-keys", "-t", pane, "Enter")
        wait_until(lambda: delivered(c, 3), 10, "the rest once the agent runs again")
        assert [c.get(i).message.attempts for i in ids] == [1, 1, 1]
    wait_until(lambda: len(records(out)) >= 3, 10, "the reader to record the three")
    assert [r["text"] for r in records(out)] == ["m0", "m1", "m2"]


def test_deliver_to_shell_types_into_a_shell(make_daemon, tmux_server, tmp_path):
    server = tmux_server()
    marker = tmp_path / "ran-as-a-command"
    pane = server.session("sh", "sh")
    d = make_daemon(agents=[tmux_agent("Sh", server, pane, header="", deliver_to_shell=True)])
    with d.client() as c:
        c.send("Sh", f"touch {marker}", wait=True, timeout=10)
    wait_until(marker.exists, 10, "the shell to run the message: what deliver_to_shell = true is for")
