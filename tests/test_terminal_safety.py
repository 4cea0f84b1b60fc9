"""Text we print can never drive the terminal: a body's escape sequences are shown, not obeyed.

`show`, `history` and `watch` print other people's text. An OSC 52 in a body must not write the
clipboard, a CSI 2J must not clear the screen, a C1 CSI or a bidi override must not act; on a
terminal and in a pipe alike. `--json` keeps the exact text.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import msgspec
from conftest import wait_until
from figures import record
from tmux_fixtures import TmuxServer

from coordctl import human

OSC52 = "\x1b]52;c;SGVsbG8=\x07"  # "write Hello to the clipboard"
EVIL = f"copy {OSC52} clear \x1b[2J csi \x9b31m del \x7f cr \r rlo \u202eevil\u202c end"
SHOWN = "copy ␛]52;c;SGVsbG8=␇ clear ␛[2J csi <U+009B>31m del ␡ cr ␍ rlo <U+202E>evil<U+202C> end"
# What must never reach stdout raw: C0 but newline and tab, DEL, C1, the bidi controls.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def coordctl(d, *args: str) -> list[str]:
    return [sys.executable, "-m", "coordctl", "--socket", d.socket, *args]


def run(d, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COORDD_SOCKET"}
    out = subprocess.run(coordctl(d, *args), capture_output=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert not RAW.search(text), f"a control character reached stdout: {text!r}"
    return text


def test_show_history_and_watch_print_escapes_visibly(daemon):
    watch = subprocess.Popen(coordctl(daemon, "watch"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watch_json = subprocess.Popen(coordctl(daemon, "--json", "watch"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with daemon.client() as c:
            wait_until(lambda: c.status().watchers == 2, what="both watchers to subscribe")
            i = c.send("Agent-1", EVIL, sender="Agent-2", kind="task", wait=True)
        events = [watch.stdout.readline().decode() for _ in range(3)]  # accepted, delivering, delivered
        events_json = [watch_json.stdout.readline().decode() for _ in range(3)]
    finally:
        for proc in (watch, watch_json):
            proc.kill()
            proc.wait(10)
    for line in events + events_json:
        assert not RAW.search(line), f"watch printed a control character: {line!r}"
    assert f"#{i} -> Agent-1" in events[0] and SHOWN in events[0]
    assert json.loads(events_json[0])["preview"] == EVIL  # the exact text, \u-escaped

    shown = run(daemon, "show", str(i))
    assert SHOWN in shown and "from:" in shown and "Agent-2" in shown
    page = run(daemon, "history", "--limit", "5")
    assert "copy ␛]52;c;SGVsbG8=␇ clear ␛[2J csi <U+009B>31m" in page  # the table cuts the body at 60 characters

    for args in (("--json", "show", str(i)), ("--json", "history", "--limit", "5")):
        text = run(daemon, *args)  # escaped as JSON \u sequences: no raw DEL, C1, bidi either
        doc = json.loads(text)
        body = doc["message"]["body"] if args[1] == "show" else doc["messages"][0]["body"]
        assert body == EVIL
    record(
        "hardening_terminal_escapes",
        hardening="OSC 52, CSI 2J, C1, bidi in a body via show/watch",
        outcome="shown as ␛]52…␇ / <U+009B>; --json keeps the exact text",
    )


def test_error_lines_are_made_visible_too():
    env = {k: v for k, v in os.environ.items() if k != "COORDD_SOCKET"}
    out = subprocess.run(
        [sys.executable, "-m", "coordctl", "--socket", "/nonexistent/\x1b[2J\x9b/sock", "ping"],
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 3
    err = out.stderr.decode()
    assert "/nonexistent/␛[2J<U+009B>/sock" in err and not RAW.search(err)


def test_a_terminal_is_not_driven_by_a_shown_message(daemon):
    """Inside a real tmux pane (which obeys OSC 52 with set-clipboard on): the screen is not cleared
    and no paste buffer appears."""
    with daemon.client() as c:
        i = c.send("Agent-1", EVIL, wait=True)
    server = TmuxServer()
    try:
        show = shlex.join(coordctl(daemon, "show", str(i)))
        pane = server.session("show", "sh", "-c", f"echo BEFORE-SHOW; read go; {show}; echo AFTER-SHOW; exec cat")
        wait_until(lambda: "BEFORE-SHOW" in server.capture(pane), what="the pane's shell to start")
        server.tmux("set-option", "-s", "set-clipboard", "on")  # OSC 52 would now make a paste buffer
        server.tmux("send-keys", "-t", pane, "go", "Enter")

        def ended() -> str:
            screen = server.capture(pane)
            return screen if "AFTER-SHOW" in screen else ""

        screen = wait_until(ended, what="show to end")
        assert "BEFORE-SHOW" in screen, f"the screen was cleared:\n{screen}"
        assert "␛]52;c;SGVsbG8=␇" in screen and "<U+202E>evil" in screen
        assert server.tmux("list-buffers").stdout == "", "OSC 52 reached tmux's clipboard"
    finally:
        server.kill()


def test_every_hidden_character_is_replaced_and_json_round_trips():
    """`visible` and `json_escaped` cover the same characters, and JSON decodes back to the exact text."""
    hidden = [chr(c) for c in range(0x110000) if RAW.fullmatch(chr(c))]
    text = "".join(hidden)
    assert not RAW.search(human.visible(text)) and human.visible("tab\tand\nnewline") == "tab\tand\nnewline"
    encoded = human.json_escaped(msgspec.json.encode({"body": text}))
    assert not RAW.search(encoded.decode()) and json.loads(encoded) == {"body": text}
