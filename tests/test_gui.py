"""The gui transport against a real X server (Xvfb) and real xterm windows running `cat >> FILE`.

The daemon clicks each xterm, pastes with ctrl+shift+v and presses Enter, so each
file receives exactly the text the agent would have seen in its chat input.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from conftest import Daemon, concurrently, wait_until
from tmux_fixtures import READER, records
from x11 import XServer, xserver  # noqa: F401  (the fixture)

from coordctl import Client, CoordError, coords, protocol
from coordd import config
from coordd.gui.transport import GuiTransport, coalesce, render
from coordd.model import Record

pytestmark = pytest.mark.timeout(120)

HEADER = "<<{id}|{sender}|{to}|{priority}>>"  # easy to parse back out of the files
HEADER_LINE = re.compile(r"^<<(\d+)\|([^|]+)\|([^|]+)\|(\w+)>>$")
JOINED = " \u23ce "  # " ⏎ ": what multiline "join" shows in place of each newline
FAST = {"backoff_initial_ms": 50, "backoff_max_ms": 200, "unhealthy_recheck_ms": 100}
# Window origins on the 1280x1024 screen; an 80x20 xterm is 484x264 px. The daemon clicks each one's middle.
ORIGINS = [(20, 20), (660, 20), (20, 520), (660, 520)]
# The old tool's coordinates file, as it shipped with that tool (a copy kept in the repository).
SHARED_COORDS = Path(__file__).parent / "fixtures" / "cursor_agent_coords.json"


def gui_agent(n: int, **keys) -> dict:
    x, y = ORIGINS[n - 1]
    return {"id": f"Agent-{n}", "transport": "gui", "x": x + 242, "y": y + 132, "paste_hotkey": "ctrl+shift+v", **keys}


def start_xterms(x: XServer, tmp: Path, n: int = 4, suffix: str = "") -> list[Path]:
    files = []
    for i in range(1, n + 1):
        out = tmp / f"agent-{i}{suffix}.txt"
        out.touch()
        x.xterm(f"agent-{i}{suffix}", *ORIGINS[i - 1], out)
        files.append(out)
    return files


def parse(path: Path) -> list[tuple[int, str, str, str, str]]:
    """(id, sender, to, priority, body) of each message cat wrote, in file order. With multiline "join" (the
    default) each message is one input: one line, its header and body lines joined by " ⏎ "."""
    out = []
    for line in path.read_text(encoding="utf-8").split("\n")[:-1]:  # each message ends with Enter's newline
        head, *body = line.split(JOINED)
        m = HEADER_LINE.match(head)
        assert m, f"{path.name} has a line that is not one whole message: {line!r}"
        out.append((int(m[1]), m[2], m[3], m[4], "\n".join(body)))
    return out


def body_for(sender: str, n: int) -> str:
    return (
        f"{sender} #{n:03d}: review PR #{n} please\n"
        f"ünïcødé ✓ — 日本語 — emoji 🚀 $HOME `whoami` $(rm -rf /) 'single' \"double\" \\ | & ; < > * ? [a] {{b}} ~\n"
        "    indented line; tab\tseparated\n"
        "last line"
    )


def delivered(c: Client, n: int) -> bool:
    return sum(a.delivered for a in c.status().agents) >= n


def agent_status(c: Client, agent: str) -> protocol.AgentStatus:
    return next(a for a in c.status().agents if a.id == agent)


def unhealthy(c: Client, agent: str) -> protocol.AgentStatus | None:
    st = agent_status(c, agent)
    return None if st.healthy else st


def at_least(value, n: int, count: str | None = None):
    """value once it has n items (or n occurrences of `count`), else None: for wait_until."""
    return value if (value.count(count) if count else len(value)) >= n else None


def clipboard() -> bytes | None:
    """The CLIPBOARD's text as another application gets it, or None when empty."""
    clip = subprocess.run(["xclip", "-selection", "clipboard", "-o"], capture_output=True)
    return clip.stdout if clip.returncode == 0 else None


def warp(x: XServer, px: int, py: int) -> None:
    """Move the real mouse pointer (as a person would)."""
    from coordd.gui.clipboard import open_display

    d = open_display(x.display)
    d.screen().root.warp_pointer(px, py)
    d.sync()
    d.close()


# --- without X: rendering, coalescing, config, the coordinates file -------------------------------------


def test_default_header_mirrors_the_old_tool():
    rec = Record(
        id=7, agent="Agent-1", body="Deploy is blocked\non tests", priority="urgent", created=0, sender="Agent-2"
    )
    assert render(rec, config.Gui().header) == "[A2A] Agent-2 -> Agent-1 | URGENT\nDeploy is blocked\non tests"
    assert render(rec, "{id} {kind} {priority} {tags}") == "7 message urgent \nDeploy is blocked\non tests"
    assert render(rec, "") == "Deploy is blocked\non tests"


def test_coalesce_caps_bytes_and_keeps_order():
    texts = ["a" * 10, "b" * 10, "c" * 10, "d" * 40, "e" * 5]
    assert coalesce(texts, 34) == [(3, "a" * 10 + "\n\n" + "b" * 10 + "\n\n" + "c" * 10), (1, "d" * 40), (1, "e" * 5)]
    assert coalesce(["ü" * 10, "x"], 22) == [(1, "ü" * 10), (1, "x")]  # bytes, not characters


@pytest.mark.parametrize(
    "agent, gui, key",
    [
        ({"y": 5}, {}, "needs both `x` and `y`"),
        ({"x": 1, "y": 1, "paste_hotkey": "Ctrl+V"}, {}, "agents[0].paste_hotkey"),
        ({"x": 1, "y": 1, "click_settle_ms": -1}, {}, "agents[0].click_settle_ms"),
        ({"x": 1, "y": 1, "onboarding_x": 3}, {}, "onboarding_y"),
        ({"x": 1, "y": 1, "onboarding": "nope"}, {}, "agents[0].onboarding"),
        ({"x": 1, "y": 1, "coalesce_max_bytes": 0}, {}, "agents[0].coalesce_max_bytes"),
        ({"x": 1, "y": 1}, {"header": "{sendr}"}, "gui.header"),
        ({"x": 1, "y": 1, "header": "{id"}, {}, "agents[0].header"),
        ({"x": 1, "y": 1}, {"sequences": {"s": [{"do": "wait"}]}}, "gui.sequences[...][0]"),
        ({"x": 1, "y": 1}, {"sequences": {"s": [{"do": "jump"}]}}, "gui.sequences[...][0]"),
        ({"x": 1, "y": 1}, {"sequences": {"s": [{"do": "hotkey", "keys": "ctrl + n"}]}}, "gui.sequences.s[0].keys"),
        ({"x": 1, "y": 1}, {"coords_file": "/nonexistent.json"}, "gui.coords_file"),
        ({"x": 1, "y": 1, "colour": "red"}, {}, "colour"),
    ],
)
def test_gui_config_errors_name_the_key(agent, gui, key):
    raw = {"gui": gui, "agents": [{"id": "A", "transport": "gui", **agent}]}
    with pytest.raises(config.ConfigError) as e:
        config.parse(raw, "c.toml")
    assert key in str(e.value)


def test_coords_file_supplies_agents_and_coordinates(tmp_path):
    path = tmp_path / "coords.json"
    path.write_text(
        '{"agents": {"Agent-1": {"chat_input_coordinates": [-1269, 481], "onboarding_input_coords": [-1265, 171]},'
        ' "Agent-2": {"chat_input_coordinates": [5, 6], "active": false},'
        ' "Agent-3": {"chat_input_coordinates": [7, 8], "active": true}}}'
    )
    (tmp_path / "c.toml").write_text("")
    raw = {
        "gui": {"coords_file": "coords.json"},  # relative to the config file
        "agents": [{"id": "Agent-3", "transport": "gui", "x": 70, "y": 80}, {"id": "Agent-9"}],
    }
    cfg = config.parse(raw, str(tmp_path / "c.toml"))
    by_id = {a.id: a for a in cfg.agents}
    assert set(by_id) == {"Agent-1", "Agent-3", "Agent-9"}  # the inactive Agent-2 is skipped
    a1 = by_id["Agent-1"]
    assert (a1.x, a1.y, a1.onboarding_x, a1.onboarding_y) == (-1269, 481, -1265, 171)
    assert (by_id["Agent-3"].x, by_id["Agent-3"].y) == (70, 80)  # the config's own values win


def test_import_coords_prints_toml_of_the_active_agents():
    entries = coords.load(str(SHARED_COORDS))
    text = coords.to_toml(entries)
    raw = tomllib.loads(text)
    active = [e for e in entries if e.active]
    assert [a["id"] for a in raw["agents"]] == [e.id for e in active] and len(active) < len(entries)
    first = raw["agents"][0]
    assert (first["x"], first["y"], first["onboarding_x"]) == (active[0].x, active[0].y, active[0].onboarding_x)
    cfg = config.parse(raw, "<import-coords>")  # what it prints is a valid config
    assert all(isinstance(a, config.GuiAgent) for a in cfg.agents)


def test_bad_coords_file_names_the_key(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"agents": {"Agent-1": {"chat_input_coordinates": [1]}}}')
    with pytest.raises(coords.CoordsError, match=r"agents\.Agent-1\.chat_input_coordinates"):
        coords.load(str(path))


# --- a real X server -------------------------------------------------------------------------------------


def test_four_windows_eight_concurrent_senders(make_daemon, xserver, tmp_path):
    """8 clients x 50 messages across 4 xterms: each file holds exactly its agent's messages, in order."""
    files = start_xterms(xserver, tmp_path)
    d = make_daemon(agents=[gui_agent(n) for n in range(1, 5)], gui={"header": HEADER}, delivery=FAST)
    sent: dict[int, tuple[str, str, str]] = {}  # id -> (sender, to, body)
    lock = threading.Lock()

    def client(k: int) -> None:
        sender = f"client-{k}"
        with d.client() as c:
            for n in range(50):
                to = f"Agent-{(k + n) % 4 + 1}"
                body = body_for(sender, n)
                message_id = c.send(to, body, sender=sender)
                with lock:
                    sent[message_id] = (sender, to, body)

    concurrently(8, client)
    assert len(sent) == 400
    with d.client() as c:
        wait_until(lambda: delivered(c, 400), 90, "400 deliveries")
        assert all(a.healthy and a.failed == 0 for a in c.status().agents)
    for n, path in enumerate(files, 1):
        agent = f"Agent-{n}"
        expected = {i for i, (_, to, _) in sent.items() if to == agent}
        got = wait_until(lambda: at_least(parse(path), len(expected)), 10, f"{path.name} complete")
        ids = [m[0] for m in got]
        assert len(ids) == len(set(ids)), f"{agent}: a message was pasted twice"
        assert set(ids) == expected, f"{agent}: missing {expected - set(ids)}, foreign {set(ids) - expected}"
        for i, sender, to, priority, body in got:
            assert (sender, to, body) == sent[i] and priority == "regular"
        for k in range(8):  # each sender's messages in the order it sent them
            seq = [int(re.search(r"#(\d+):", body)[1]) for _, s, _, _, body in got if s == f"client-{k}"]
            assert seq == sorted(seq), f"{agent}: client-{k}'s messages out of order: {seq}"


def test_x_server_killed_messages_wait_then_flow(make_daemon, xserver, tmp_path):
    files = start_xterms(xserver, tmp_path, 2)
    agents = [gui_agent(1), gui_agent(2), {"id": "Inbox-1", "transport": "inbox"}]
    d = make_daemon(agents=agents, gui={"header": HEADER}, delivery=FAST)
    with d.client() as c:
        first = [c.send(f"Agent-{n % 2 + 1}", f"before the crash {n}", sender="s") for n in range(10)]

        def kill_mid_run() -> None:
            with d.client() as watcher:
                wait_until(lambda: delivered(watcher, 3), 20, "the first deliveries")
            xserver.kill()

        killer = threading.Thread(target=kill_mid_run)
        killer.start()
        rest = [c.send(f"Agent-{n % 2 + 1}", f"during the outage {n}", sender="s") for n in range(10)]
        killer.join()
        down = wait_until(lambda: [a for a in c.status().agents if not a.healthy], 20, "gui agents to show unhealthy")
        assert {a.id for a in down} <= {"Agent-1", "Agent-2"}
        assert all("X display" in a.reason or "cannot open" in a.reason for a in down), down
        # other transports are unaffected
        assert c.send("Inbox-1", "still flowing", wait=True, timeout=10)
        status = c.status()
        assert sum(a.failed for a in status.agents) == 0
        assert sum(a.queued + a.in_flight for a in status.agents) > 0  # waiting, not failed
        xserver.start()  # a new X server on the same display, and the windows again
        files2 = start_xterms(xserver, tmp_path, 2, suffix="-after")
        wait_until(lambda: delivered(c, 21), 30, "every message delivered after the X server is back")
        assert all(a.healthy for a in c.status().agents)
        assert sum(a.failed for a in c.status().agents) == 0
    texts = {i: body for f in files + files2 for i, _, _, _, body in parse(f)}
    for i in first + rest:
        assert i in texts, f"message {i} never reached a window"
    # At-least-once: only the message being pasted when X died may show up twice (partly, then whole).
    after = [i for f in files2 for i, *_ in parse(f)]
    assert len(after) == len(set(after))
    assert d.logtext().count("pyautogui loaded") == 1  # reconnecting reloads its X module, no second import


def test_failsafe_pauses_and_is_reported(make_daemon, xserver, tmp_path):
    [out] = start_xterms(xserver, tmp_path, 1)
    d = make_daemon(agents=[gui_agent(1)], gui={"header": HEADER}, delivery=FAST)
    with d.client() as c:
        c.send("Agent-1", "first", wait=True, timeout=10)
        warp(xserver, 0, 0)  # the user slams the mouse into a corner
        queued = c.send("Agent-1", "second")
        st = wait_until(lambda: unhealthy(c, "Agent-1"), 10, "fail-safe reported")
        assert "fail-safe" in st.reason
        assert c.get(queued).message.status == "queued"
        warp(xserver, 400, 400)
        wait_until(lambda: c.get(queued).message.status == "delivered", 10, "delivery to resume")
        assert agent_status(c, "Agent-1").healthy
    assert wait_until(lambda: [b for *_, b in parse(out)] == ["first", "second"] or None, 5, "both in the window")


def test_no_display_is_unhealthy_and_other_agents_flow(make_daemon, monkeypatch, tmp_path):
    monkeypatch.delenv("DISPLAY", raising=False)
    d = make_daemon(agents=[gui_agent(1), {"id": "Inbox-1"}], delivery=FAST)
    with d.client() as c:
        queued = c.send("Agent-1", "waits for a display")
        c.send("Inbox-1", "goes out", wait=True, timeout=10)
        st = wait_until(lambda: unhealthy(c, "Agent-1"), 10, "gui unhealthy")
        assert "no DISPLAY" in st.reason
        assert c.get(queued).message.status == "queued"
        with pytest.raises(CoordError) as e:
            c.call(protocol.Onboard(agent="Agent-1"))
        assert e.value.code == "transport_down"
    assert "pyautogui loaded" not in d.logtext()  # it needs a display: never imported without one


def test_missing_x_authority_is_the_reason(make_daemon, xserver, monkeypatch, tmp_path):
    monkeypatch.setenv("XAUTHORITY", str(tmp_path / "no-such-file"))
    d = make_daemon(agents=[gui_agent(1)], delivery=FAST)
    with d.client() as c:
        c.send("Agent-1", "waits")
        st = wait_until(lambda: unhealthy(c, "Agent-1"), 10, "gui unhealthy")
        assert "X authority" in st.reason and "XAUTHORITY" in st.reason
        with pytest.raises(CoordError) as e:
            c.call(protocol.Pointer())
        assert e.value.code == "transport_down"


def test_urgent_coalesced_and_clipboard_restored(make_daemon, xserver, tmp_path):
    """Coalescing pastes queued messages together; urgent uses its key; the user's clipboard comes back."""
    [out] = start_xterms(xserver, tmp_path, 1)
    agent = gui_agent(1, coalesce=True, coalesce_max_messages=4, urgent_submit_key="ctrl+enter")
    d = make_daemon(agents=[agent], gui={"header": HEADER}, delivery=FAST)
    subprocess.run(["xclip", "-selection", "clipboard", "-i"], input=b"the user's own clipboard", check=True)
    wait_until(lambda: clipboard() == b"the user's own clipboard", 5, "xclip to own the clipboard")  # it forks first
    with d.client() as c:
        first = c.send("Agent-1", "warm-up", wait=True, timeout=10)
        warp(xserver, 0, 0)  # hold delivery (fail-safe) so that messages queue up
        ids = [c.send("Agent-1", f"queued {n}\nsecond line") for n in range(6)]
        wait_until(lambda: not agent_status(c, "Agent-1").healthy, 10, "delivery held")
        urgent = c.send("Agent-1", "urgent one", priority="urgent")
        warp(xserver, 400, 400)
        wait_until(lambda: all(c.get(i).message.status == "delivered" for i in [*ids, urgent]), 15, "delivery")
        assert all(c.get(i).message.attempts == 1 for i in ids)  # each recorded on its own

    def msg(i: int, body: str, priority: str = "regular") -> str:
        return f"<<{i}|unknown|Agent-1|{priority}>>\n{body}"

    queued = [msg(i, f"queued {n}\nsecond line") for n, i in enumerate(ids)]
    pastes = [
        msg(first, "warm-up"),
        msg(urgent, "urgent one", "urgent"),  # urgent first, then at most 4 a paste
        "\n\n".join(queued[:4]),
        "\n\n".join(queued[4:]),
    ]
    expected = "".join(p.replace("\n", JOINED) + "\n" for p in pastes)  # each paste one line, then Enter
    wait_until(lambda: out.read_text() == expected, 5, f"the window to show {expected!r}; it has {out.read_text()!r}")
    assert clipboard() == b"the user's own clipboard"
    assert d.stop() == 0  # a clean stop hands the clipboard's text over to xclip: it outlives coordd
    assert clipboard() == b"the user's own clipboard"


def test_paste_nobody_takes_is_a_failed_attempt(make_daemon, xserver):
    agent = {"id": "Agent-1", "transport": "gui", "x": 600, "y": 500}  # the bare root window: nothing pastes
    d = make_daemon(agents=[agent], gui={"paste_timeout_ms": 200}, delivery={**FAST, "max_attempts": 1})
    with d.client() as c:
        with pytest.raises(CoordError) as e:
            c.send("Agent-1", "into the void", wait=True, timeout=10)
        assert e.value.code == "not_delivered"
        msg = c.get(e.value.message_id).message
        assert msg.status == "failed" and "no application fetched the pasted text" in msg.error


def test_onboard_runs_the_sequence_and_pointer_reads_the_mouse(make_daemon, xserver, tmp_path):
    [out] = start_xterms(xserver, tmp_path, 1)
    sequence = [
        {"do": "click"},
        {"do": "wait", "ms": 5},
        {"do": "paste", "text": "hello {agent}: {message}"},
        {"do": "submit"},
        {"do": "click", "at": "chat"},
        {"do": "paste"},
        {"do": "submit", "urgent": True},
    ]
    agent = gui_agent(1, onboarding="intro", onboarding_x=100, onboarding_y=60)
    d = make_daemon(agents=[agent], gui={"sequences": {"intro": sequence}}, delivery=FAST)
    with d.client() as c:
        reply = c.call(protocol.Onboard(agent="Agent-1", message="you review PRs"))
        assert reply.steps == len(sequence)
        wait_until(lambda: out.read_text() == "hello Agent-1: you review PRs\nyou review PRs\n", 5, "onboarding text")
        warp(xserver, 123, 456)
        at = c.call(protocol.Pointer())
        assert (at.x, at.y, at.screen_width, at.screen_height) == (123, 456, 1280, 1024)
        with pytest.raises(CoordError) as e:
            c.call(protocol.Onboard(agent="Nobody"))
        assert e.value.code == "unknown_agent"
    # the same through the CLI
    assert coordctl(d, "onboard", "Agent-1", "-", stdin="from stdin").stdout == "onboarded Agent-1: 7 steps\n"
    wait_until(lambda: out.read_text().endswith("hello Agent-1: from stdin\nfrom stdin\n"), 5, "CLI onboarding text")
    warp(xserver, 700, 800)
    captured = coordctl(d, "coords", "capture", "Agent-1", "--delay", "0").stdout
    assert captured.splitlines()[1:] == ["x = 700", "y = 800"]
    assert coordctl(d, "coords", "capture", "Agent-1", "--delay", "0", "--onboarding").stdout.endswith(
        "onboarding_x = 700\nonboarding_y = 800\n"
    )


def coordctl(d: Daemon, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "coordctl", "--socket", d.socket, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out


def test_cli_import_coords_prints_the_active_agents():
    out = subprocess.run(
        [sys.executable, "-m", "coordctl", "agents", "import-coords", str(SHARED_COORDS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == coords.to_toml(coords.load(str(SHARED_COORDS)))
    assert tomllib.loads(out.stdout)["agents"]


def test_a_body_larger_than_one_x_request_is_pasted_whole(make_daemon, xserver, tmp_path):
    """Over 64 KiB the clipboard goes out in INCR chunks; the window still gets every line."""
    [out] = start_xterms(xserver, tmp_path, 1)
    # The agent's own header template; "paste": cat reads lines of at most 4095 bytes, one line would not do.
    d = make_daemon(agents=[gui_agent(1, header=HEADER, multiline="paste")], delivery=FAST)
    body = "\n".join(f"line {n:05d} " + "é✓x" * 20 for n in range(1500))  # ~120 KB of UTF-8
    assert len(body.encode()) > 100_000
    with d.client() as c:
        message_id = c.send("Agent-1", body, sender="big", wait=True, timeout=30)
    wait_until(lambda: out.read_text().count("\n") >= 1501, 20, "the large message in the window")
    assert out.read_text() == f"<<{message_id}|big|Agent-1|regular>>\n{body}\n"


# --- a message is one submit: multiline = "join" | "paste" | "keys" -------------------------------------


def test_the_unset_multiline_follows_the_submit_key():
    """Where Enter submits, a pasted newline (an Enter to a terminal) may too: "join"; else "paste"."""

    def multiline(**keys) -> str:
        return GuiTransport(config.GuiAgent(id="A", x=1, y=1, **keys), config.Gui()).multiline

    assert multiline() == "join" and multiline(submit_key="ctrl+enter") == "paste"
    assert multiline(submit_key="ctrl+enter", multiline="keys") == "keys" and multiline(multiline="paste") == "paste"


@pytest.mark.parametrize(
    "keys, error",
    [
        ({"multiline": "lines"}, "`agents[0].multiline` = 'lines': use \"join\""),
        ({"newline_key": "Shift+Enter"}, "agents[0].newline_key"),
    ],
)
def test_multiline_config_errors_name_the_key(keys, error):
    with pytest.raises(config.ConfigError) as e:
        config.parse({"agents": [{"id": "A", "transport": "gui", "x": 1, "y": 1, **keys}]}, "c.toml")
    assert error in str(e.value)


def test_a_multi_line_message_is_one_line_in_a_terminal_without_bracketed_paste(make_daemon, xserver, tmp_path):
    """xterm pastes each newline to cat as Enter: `hi\\n/exit` used to be two inputs, the second a command. By
    default (submit key Enter: multiline "join") it is one line, its newlines (LF, CR LF) shown as " ⏎ "."""
    [out] = start_xterms(xserver, tmp_path, 1)
    d = make_daemon(agents=[gui_agent(1)], gui={"header": HEADER}, delivery=FAST)
    with d.client() as c:
        first = c.send("Agent-1", "hi\n/exit", wait=True, timeout=10)
        second = c.send("Agent-1", "next\r\nline", wait=True, timeout=10)
    got = wait_until(lambda: out.read_text().count("\n") >= 2 and out.read_text(), 5, "two inputs")
    assert got == (
        f"<<{first}|unknown|Agent-1|regular>>{JOINED}hi{JOINED}/exit\n"
        f"<<{second}|unknown|Agent-1|regular>>{JOINED}next{JOINED}line\n"
    )


def test_keys_and_bracketed_paste_give_one_input_with_its_newlines(make_daemon, xserver, tmp_path):
    """Two programs that take a message with its newlines as one input: one without bracketed paste whose
    newline key is ctrl+j ("keys": a line, ctrl+j, a line), and one that asked xterm for bracketed paste
    ("paste"). Each submission is one record of tmux_reader.py's file."""
    files = [tmp_path / "keys.jsonl", tmp_path / "paste.jsonl"]
    for n, (out, flags) in enumerate(zip(files, (["--no-bracketed-paste"], []), strict=True)):
        xserver.xterm(f"agent-{n + 1}", *ORIGINS[n], out, [sys.executable, READER, str(out), *flags])
    d = make_daemon(
        agents=[
            gui_agent(1, header="", multiline="keys", newline_key="ctrl+j"),
            gui_agent(2, header="", multiline="paste"),
        ],
        delivery=FAST,
    )
    with d.client() as c:
        for agent in ("Agent-1", "Agent-2"):
            c.send(agent, "hi\n\n/exit", wait=True, timeout=10)
            c.send(agent, "next", wait=True, timeout=10)
    for out in files:
        got = wait_until(lambda: at_least(records(out), 2), 5, f"two inputs in {out.name}")
        assert [r["text"] for r in got] == ["hi\n\n/exit", "next"], out.name
