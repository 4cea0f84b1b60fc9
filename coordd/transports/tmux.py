"""The tmux transport: paste each message into the agent's pane, press Enter, confirm it was submitted.

One message, over the server's warm control-mode connection (tmux_control.py):

1. Resolve the configured target to a pane id (`capture-pane` fails on a missing
   pane, `display-message` then reads its id and state), so every later command
   of this delivery addresses that one pane. Targets are made exact (`=session:
   =window.pane`): a gone session `a1` never resolves to a prefix match `a10`.
   A pane whose foreground program is a shell is not running its agent (it
   quit, or has not started), and what is typed into a shell runs as a
   command: the transport reports itself down for that reason, nothing is
   pasted, nothing counts as an attempt, and the messages go out once the
   agent runs again (deliver_to_shell = true for an agent that is a shell).
2. Wait for idle, when configured: the screen unchanged for idle_quiet_ms and/or
   the cursor line matching idle_prompt, for at most idle_max_wait_ms.
3. Load the text into a per-message named buffer (`set-buffer`, or `load-buffer`
   of a 0600 temp file above SET_BUFFER_MAX bytes) and `paste-buffer -p -d`:
   bracketed paste when the program asked for it; the buffer is deleted by the
   paste. A text of several lines must still be one input (see "multiline" below).
4. After enter_delay_ms, and once the cursor's line shows the program took the
   paste in (it differs from before the paste; at most submit_timeout_ms), press
   Enter (`send-keys Enter`: the only key name sent but newline_key, see below).
5. Submission check: poll the cursor's line (wrapped parts joined) until it
   differs from before Enter and no longer ends with the end of the text, for at
   most submit_timeout_ms. Waiting for the paste to show first is what makes this
   check mean something: otherwise a capture taken before the program drew the
   paste would pass. If the text stays, the attempt fails with "text left
   unsubmitted" and the transport remembers the text sits in that pane: the
   retry (after the delivery backoff) presses Enter again, never pastes a second
   copy; so does the transport a reload puts in its place (same server and
   pane). A program that never shows its input costs submit_timeout_ms before
   its Enter and fails the check: set submit_check = false for it.

A message is one input, whatever its lines. Without bracketed paste a program
(cat, Python's readline) takes each newline of a paste as Enter, so a text of
several lines goes in as the agent's `multiline` says:
- "join" (default): where the pane's program asked for bracketed paste, the text
  is pasted as it is (one bracketed block); elsewhere its lines are joined into
  one, each newline shown as " ⏎ ". Only tmux 3.7 and newer report the pane's mode
  (#{bracket_paste_flag}, read with the pane's state, no extra round trip); with
  an older tmux every multi-line text is joined: set "paste" for an agent known
  to take bracketed paste (the agent CLIs do) to keep its newlines.
- "paste": pasted as it is; one input only if the program asked for bracketed paste.
- "keys": each line pasted on its own, the agent's newline_key (a tmux key name,
  default C-j) pressed between two lines: for a program without bracketed paste
  where that key starts a new line without submitting.
A program that reads lines in the terminal's canonical mode (cat) takes at most
4095 bytes per line: the kernel drops the rest of a longer joined line.

The text is the header line (if any) and the body. Control characters other
than newline and tab are keystrokes, not text (ESC would end a bracketed paste
early or cancel the agent's input), so they are shown in caret notation (`^[`,
`^C`, `^?`); C1 controls as `<U+0085>`; CR and CRLF become newlines.

A failure that says nothing about the message (the server not running or not
reachable, the pane missing or its program exited, the pane in copy mode or its
input off, a shell in front) raises TransportDown: the agent shows `down` with
the reason, its messages stay queued, no attempt is counted, and they go out
once the pane can take them (the worker tries again with backoff; the next
command reconnects to the server by itself). Only what this message met fails an
attempt (NotTaken: text left unsubmitted, a pane never idle; or a command tmux
refused for another reason than a missing target).

Warm connection against fork-per-call, measured by perf/bench_tmux.py (2-core VM,
tmux 3.3a, p50 of 300; the same transport code, only the command channel differs):
one command round trip 0.11 ms in control mode against 2.2 ms for a fork + exec of
the tmux client; one message (at least 11 commands) 0.97 ms against 23.7 ms with
enter_delay_ms = 0. Forking is not as fast, so the connection stays warm. With the
default enter_delay_ms (5) a message takes 6.2 ms, and send(wait=True) through
coordd 12.6 ms (5.5 ms of that is the daemon's own, as for an inbox agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile

from coordd.config import TmuxAgent
from coordd.transports import DeliveryError, Record, Transport, TransportDown, header_fields, one_line
from coordd.transports.tmux_control import Connection, TmuxError, acquire, release, server_args

log = logging.getLogger("coordd.tmux")

SET_BUFFER_MAX = 16384  # bytes; larger texts go through a temp file and load-buffer
SUBMIT_POLL_S = 0.002
TAIL_CHARS = 16  # how much of the text's end the submission check looks for
# bracket_paste_flag: whether the program asked for bracketed paste; tmux 3.7 and newer, "" before.
PANE_STATE = "#{pane_id} #{pane_in_mode} #{pane_input_off} #{pane_dead} #{bracket_paste_flag} #{pane_current_command}"
# Programs that mean "the agent is not running in this pane": what is typed into them runs as a command.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "fish", "ksh", "mksh", "ash", "tcsh", "csh", "nu", "xonsh", "pwsh"})


class PaneUnavailable(TmuxError):
    """The pane cannot take any message now (gone, exited, in copy mode, input off, a shell in front)."""


class AgentNotRunning(PaneUnavailable):
    """The pane's foreground program is a shell: the agent is not running there (see deliver_to_shell)."""


class NotTaken(TmuxError):
    """The pane did not take this message (its text left unsubmitted, the pane never idle): a failed attempt."""


_VISIBLE = {c: "^" + chr(c + 64) for c in range(0x20) if c not in (0x09, 0x0A)}
_VISIBLE.update({0x7F: "^?", **{c: f"<U+{c:04X}>" for c in range(0x80, 0xA0)}})


def printable(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").translate(_VISIBLE)


def render(header: str, m: Record) -> str:
    text = f"{header.format(**header_fields(m))}\n{m.body}" if header else m.body
    return printable(text)


def tail_fragment(text: str) -> str:
    """The end of the text's last non-blank line, whitespace collapsed: what the input line shows last."""
    for line in reversed(text.split("\n")):
        if words := line.split():
            return " ".join(words)[-TAIL_CHARS:]
    return ""


def exact_target(target: str) -> str:
    """`sess:win.pane` as `=sess:=win.pane`: names match exactly, never by prefix or pattern."""
    if target.startswith("%"):
        return target
    session, _, rest = target.partition(":")
    if not session.startswith(("$", "=")):
        session = "=" + session
    if not rest:
        return session
    window, dot, pane = rest.partition(".")
    if not window.startswith(("@", "=")):
        window = "=" + window
    return f"{session}:{window}{dot}{pane}"


class TmuxTransport(Transport):
    name = "tmux"
    max_batch = 8

    def __init__(self, agent: TmuxAgent) -> None:
        self.agent = agent
        self.target = exact_target(agent.target)
        self.server = server_args(agent.socket_name, agent.socket_path)
        self.prompt = re.compile(agent.idle_prompt) if agent.idle_prompt else None
        self.conn: Connection | None = None
        # message id -> (pane id, its input line) where the text waits for an Enter that did not take
        self.unsubmitted: dict[int, tuple[str, tuple[str, str]]] = {}
        self.tmpdir: str | None = None
        self.tmux_missing = shutil.which("tmux") is None
        # Whether the pane ran its agent (not a shell, input on) when a delivery last looked; None: none has yet.
        self.agent_in_front: bool | None = None

    async def start(self) -> None:
        self.conn = acquire(self.server)
        try:
            await self.conn.connect()
        except TmuxError as e:  # not fatal: each delivery tries again, and fails with the reason
            log.warning("agent %s: %s", self.agent.id, e.reason)

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await release(conn)
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def take_over(self, old: Transport) -> None:
        # Texts waiting in a pane for their Enter: the same pane on the same server gets Enter, not a second paste.
        if isinstance(old, TmuxTransport) and (old.server, old.target) == (self.server, self.target):
            self.unsubmitted = old.unsubmitted  # shared: old's delivery in progress may still add to it

    def health(self) -> str | None:
        # A gone pane or server is found by trying (deliver raises TransportDown): only a missing tmux shows here.
        if self.tmux_missing:
            self.tmux_missing = shutil.which("tmux") is None
        return "tmux is not installed (no `tmux` on PATH)" if self.tmux_missing else None

    def idle(self, queued: int, unacked: int) -> bool | None:
        """Nothing waiting or in flight, and at the last delivery the pane ran the agent, ready for input (a
        pane is asked only when a delivery is due: no tmux command here). An agent in a pane acknowledges
        rarely, so its unacknowledged messages do not count. None until a delivery has looked at the pane."""
        if self.agent_in_front is None:
            return None
        return queued == 0 and self.agent_in_front

    async def deliver(self, messages: list[Record]) -> None:
        if self.conn is None:
            self.conn = acquire(self.server)
        for n, m in enumerate(messages):
            try:
                await self._deliver_one(self.conn, m)
            except NotTaken as e:
                raise DeliveryError(e.reason, delivered=n) from None
            except TmuxError as e:
                if e.command_failed and not e.reason.startswith("can't find"):  # refused what this message needed
                    raise DeliveryError(f"tmux pane {self.agent.target}: {e.reason}", delivered=n) from None
                # Not a failed attempt: the server, the pane or the agent in it is not there; the messages wait.
                raise TransportDown(await self._reason(self.conn, e), delivered=n) from None

    async def _reason(self, conn: Connection, e: TmuxError) -> str:
        if e.command_failed:  # can't find session/window/pane
            return f"tmux pane {self.agent.target} not found: {e.reason}"
        if type(e) is not TmuxError:  # PaneUnavailable and its kind: the reason is already the pane's
            return e.reason
        # The connection closed. A control client also ends when the session it is attached to is destroyed
        # (tmux's detach-on-destroy) while the server runs on: look at the pane again on a new connection, so
        # that the reason names what is gone: the pane, or the server.
        try:
            await conn.connect()
            await self._resolve(conn)
        except TmuxError as again:
            if again.command_failed or type(again) is not TmuxError:
                return await self._reason(conn, again)
        return e.reason

    async def _deliver_one(self, conn: Connection, m: Record) -> None:
        pane, bracketed = await self._resolve(conn)
        text = render(self.agent.header, m)
        multiline = self.agent.multiline if "\n" in text else "paste"
        if multiline == "join" and not bracketed:  # a bracketed paste is one input already: it keeps the lines
            text = one_line(text)
        check, tail = self.agent.submit_check, tail_fragment(text)
        earlier = self.unsubmitted.get(m.id)
        if earlier and earlier[0] == pane:  # pasted by an earlier attempt; only its Enter did not take
            shown = await self._input_line(conn, pane)
            if shown != earlier[1] and not (tail and tail in shown[1]):
                del self.unsubmitted[m.id]  # it left the input line since
                return
        else:
            await self._wait_idle(conn, pane)
            before = await self._input_line(conn, pane) if check else None
            if multiline == "keys":
                await self._type_lines(conn, pane, text, m.id)
            else:
                await self._paste(conn, pane, text, m.id)
            delay = self.agent.enter_delay_ms / 1000
            await asyncio.sleep(delay)  # noqa: sleep-ok: the configured Enter delay, for programs that need one
            if check:  # Enter once the program shows the paste (else a check after Enter could pass too early)
                _, shown = await self._wait_input_line(conn, pane, lambda s: s != before)
        await conn.run("send-keys", "-t", pane, "Enter")
        if not check:
            return
        left, _ = await self._wait_input_line(conn, pane, lambda s: s != shown and not (tail and tail in s[1]))
        if not left:
            if len(self.unsubmitted) >= 256:  # forget the oldest: its message was retried or given up long ago
                del self.unsubmitted[next(iter(self.unsubmitted))]
            self.unsubmitted[m.id] = (pane, shown)
            raise NotTaken(
                f"text left unsubmitted in tmux pane {self.agent.target}: Enter did not clear "
                f"the input line within {self.agent.submit_timeout_ms} ms"
            )
        self.unsubmitted.pop(m.id, None)

    async def _resolve(self, conn: Connection) -> tuple[str, bool]:
        """The pane id the target names now, checked able to take input; and whether its program asked for
        bracketed paste (False where tmux cannot tell: before 3.7)."""
        self.agent_in_front = False  # until the checks below pass
        _, state = await conn.run_many(
            ("capture-pane", "-p", "-t", self.target, "-S", "0", "-E", "0"),  # fails when the pane is gone
            ("display-message", "-p", "-t", self.target, PANE_STATE),  # would fall back to another pane
        )
        fields = state[0].split(" ", 5) if state else []
        pane, in_mode, input_off, dead, bracketed, command = (fields + [""] * 6)[:6]
        if not pane.startswith("%"):
            raise PaneUnavailable(f"tmux pane {self.agent.target} not found")
        if dead == "1":
            raise PaneUnavailable(f"tmux pane {self.agent.target}: its program has exited")
        if in_mode == "1":
            raise PaneUnavailable(f"tmux pane {self.agent.target} is in copy mode; leave it (q) to receive messages")
        if input_off == "1":
            raise PaneUnavailable(f"tmux pane {self.agent.target} has input disabled (select-pane -e enables it)")
        if os.path.basename(command.lstrip("-")) in SHELLS and not self.agent.deliver_to_shell:
            raise AgentNotRunning(
                f"tmux pane {self.agent.target} runs {command}, a shell, not the agent: messages "
                "wait until the agent runs there (a message typed into a shell would run as a "
                "command; set deliver_to_shell = true if the agent runs under a shell script)"
            )
        self.agent_in_front = True
        return pane, bracketed == "1"

    async def _paste(self, conn: Connection, pane: str, text: str, message_id: int) -> None:
        buffer = f"coordd-{message_id}"
        data = text.encode("utf-8", "replace")
        path = None
        if len(data) > SET_BUFFER_MAX:
            path = await asyncio.get_running_loop().run_in_executor(None, self._write_temp, data)
            load = ("load-buffer", "-b", buffer, "--", path)
        else:
            load = ("set-buffer", "-b", buffer, "--", text)
        try:
            await conn.run_many(load, ("paste-buffer", "-p", "-d", "-b", buffer, "-t", pane))
        except TmuxError as e:
            if e.command_failed:  # the buffer may be left behind when the paste failed
                (fut,) = await conn.send([("delete-buffer", "-b", buffer)])
                await asyncio.gather(fut, return_exceptions=True)
            raise
        finally:
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    async def _type_lines(self, conn: Connection, pane: str, text: str, message_id: int) -> None:
        """multiline = "keys": each line pasted on its own, the agent's newline key pressed between two lines."""
        for n, line in enumerate(text.split("\n")):
            if n:
                await conn.run("send-keys", "-t", pane, self.agent.newline_key)
            if line:
                await self._paste(conn, pane, line, message_id)

    def _write_temp(self, data: bytes) -> str:
        """Runs in a worker thread. The text in a new 0600 file of a private (0700) directory."""
        if self.tmpdir is None:
            self.tmpdir = tempfile.mkdtemp(prefix="coordd-tmux-")
        fd, path = tempfile.mkstemp(dir=self.tmpdir)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    async def _input_line(self, conn: Connection, pane: str) -> tuple[str, str]:
        """The cursor's position, and its line (wrapped parts joined, whitespace collapsed)."""
        (pos,) = await conn.run("display-message", "-p", "-t", pane, "#{cursor_y} #{cursor_x}") or [""]
        y = pos.partition(" ")[0]
        if not y.isdigit():
            raise PaneUnavailable(f"tmux pane {self.agent.target} not found")
        lines = await conn.run("capture-pane", "-p", "-J", "-t", pane, "-S", str(int(y) - 8), "-E", y)
        return pos, " ".join(lines[-1].split()) if lines else ""

    async def _wait_input_line(self, conn: Connection, pane: str, done) -> tuple[bool, tuple[str, str]]:
        """Poll the input line until done(it) or submit_timeout_ms: whether it came, and the last one seen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.agent.submit_timeout_ms / 1000
        while not done(line := await self._input_line(conn, pane)):
            if loop.time() >= deadline:
                return False, line
            await asyncio.sleep(SUBMIT_POLL_S)  # noqa: sleep-ok: poll interval of a deadline-bounded wait
        return True, line

    async def _wait_idle(self, conn: Connection, pane: str) -> None:
        a = self.agent
        if not a.idle_quiet_ms and self.prompt is None:
            return
        loop = asyncio.get_running_loop()
        start = quiet_since = loop.time()
        interval = min(0.05, max(0.005, a.idle_quiet_ms / 10000))
        last = None
        while True:
            cursor, screen = await conn.run_many(
                ("display-message", "-p", "-t", pane, "#{cursor_x} #{cursor_y}"), ("capture-pane", "-p", "-t", pane)
            )
            now = loop.time()
            if (cursor, screen) != last:
                last, quiet_since = (cursor, screen), now
            y = int(cursor[0].split(" ")[1]) if cursor and cursor[0].count(" ") == 1 else -1
            line = screen[y] if 0 <= y < len(screen) else ""
            if (now - quiet_since) * 1000 >= a.idle_quiet_ms and (self.prompt is None or self.prompt.search(line)):
                return
            if (now - start) * 1000 >= a.idle_max_wait_ms:
                if a.idle_timeout == "fail":
                    raise NotTaken(f"tmux pane {a.target} was not idle within {a.idle_max_wait_ms} ms")
                log.info("agent %s: pane %s not idle after %d ms; delivering", a.id, a.target, a.idle_max_wait_ms)
                return
            await asyncio.sleep(interval)  # noqa: sleep-ok: poll interval of a deadline-bounded wait
