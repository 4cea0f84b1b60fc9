"""One warm control-mode connection (`tmux -C`) per tmux server, shared by every agent on that server.

A control-mode client reads one command per line on stdin and answers each with a
block on stdout: `%begin TIME NUMBER FLAGS`, the output lines, then `%end` or
`%error` with the same three fields. FLAGS is 1 for commands this client sent, so
blocks with other flags (the attach itself) are skipped. tmux runs a client's
commands in order, so replies are matched to requests first in, first out; other
agents' commands may be pipelined on the same connection meanwhile.

Every argument goes through tmux's command parser, so each is written as a
double-quoted token with `\\ " $ ~` and control characters escaped (no variable
or home-directory expansion; `;`, `#`, `{` are plain characters inside quotes).
Non-ASCII text is passed as UTF-8 bytes. NUL cannot be passed at all (tmux
arguments are C strings): quote() refuses it.

The client attaches with `-f no-output,ignore-size`: no %output stream from busy
panes, and it never changes a window's size. `-N` keeps it from starting a server
where none runs. When the server exits, is killed, or the attached session goes
away, the process ends; the next command reconnects. Needs tmux 3.2 or newer
(attach-session -f, and -N).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil

CONNECT_TIMEOUT_S = 5.0
_QUOTE = {ord("\\"): "\\\\", ord('"'): '\\"', ord("$"): "\\$", ord("~"): "\\~"}
_QUOTE.update({c: f"\\{c:03o}" for c in [*range(1, 0x20), 0x7F]})
_QUOTE.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


_Reply = tuple[bool, list[str]]  # a command's outcome: %end (True) or %error, and its output lines


class TmuxError(Exception):
    """The connection failed (server gone, tmux missing) or a command answered %error."""

    def __init__(self, reason: str, command_failed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.command_failed = command_failed  # tmux ran the command and refused it


def quote(arg: str) -> str:
    """arg as one token of tmux's command language, taken literally."""
    if "\0" in arg:
        raise ValueError("tmux arguments cannot contain NUL")
    return '"' + arg.translate(_QUOTE) + '"'


def command_line(argv: tuple[str, ...]) -> bytes:
    return (argv[0] + " " + " ".join(quote(a) for a in argv[1:]) + "\n").encode("utf-8", "replace")


def server_args(socket_name: str, socket_path: str) -> tuple[str, ...]:
    if socket_path:
        return ("-S", socket_path)
    return ("-L", socket_name) if socket_name else ()


def describe(server: tuple[str, ...]) -> str:
    if not server:
        return "the default tmux server"
    return f"the tmux server on socket {'name' if server[0] == '-L' else 'path'} {server[1]}"


class Connection:
    def __init__(self, server: tuple[str, ...]) -> None:
        self.server = server
        self.label = describe(server)
        self.users = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.stdin: asyncio.StreamWriter | None = None  # self.proc's stdin: both set, or both None
        self.pending: collections.deque[asyncio.Future[_Reply]] = collections.deque()
        self.reader: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()
        self.exit_reason = ""

    def live_stdin(self) -> asyncio.StreamWriter | None:
        """The process's input while it and its reader run; None when the next command must connect first."""
        if self.stdin is None or self.stdin.is_closing() or self.reader is None or self.reader.done():
            return None
        return self.stdin

    async def run(self, *argv: str) -> list[str]:
        """Run one command; its output lines. TmuxError when the connection fails or tmux refuses it."""
        (fut,) = await self.send([argv])
        return _checked(await fut)

    async def run_many(self, *commands: tuple[str, ...]) -> list[list[str]]:
        """Pipeline several commands (one round trip); every one runs even if an earlier one fails."""
        outcomes = await asyncio.gather(*await self.send(list(commands)), return_exceptions=True)
        replies: list[_Reply] = []
        for outcome in outcomes:  # every reply is collected (none left unretrieved), then the first failure raised
            if isinstance(outcome, BaseException):
                raise outcome
            replies.append(outcome)
        return [_checked(reply) for reply in replies]

    async def send(self, commands: list[tuple[str, ...]]) -> list[asyncio.Future[_Reply]]:
        stdin = self.live_stdin()
        if stdin is None:
            stdin = await self.connect()
        data = b"".join(command_line(argv) for argv in commands)
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[_Reply]] = [loop.create_future() for _ in commands]
        # Queue the futures and write the lines with no await in between: reply order = write order.
        self.pending.extend(futs)
        try:
            stdin.write(data)
        except (RuntimeError, ConnectionError) as e:  # the process is gone; its reader has not seen the end yet
            for _ in futs:
                self.pending.pop()
            raise TmuxError(f"{self.label} is not reachable: {e}") from None
        with contextlib.suppress(ConnectionError, RuntimeError):
            await stdin.drain()  # a broken pipe surfaces as the reader's end of file
        return futs

    async def connect(self) -> asyncio.StreamWriter:
        """Start the control client unless one runs; its stdin."""
        async with self.lock:
            if (stdin := self.live_stdin()) is not None:
                return stdin
            await self._stop_process()
            tmux = shutil.which("tmux")
            if tmux is None:
                raise TmuxError("tmux is not installed (no `tmux` on PATH)")
            env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
            proc = self.proc = await asyncio.create_subprocess_exec(
                tmux,
                "-u",
                "-N",
                *self.server,
                "-C",
                "attach-session",
                "-f",
                "no-output,ignore-size",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                limit=1 << 20,
                start_new_session=True,
            )
            # All three are pipes (created with PIPE above).
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            stdin = self.stdin = proc.stdin
            self.exit_reason = ""
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even after a timeout
            self.reader = asyncio.create_task(
                self._read(proc.stdout, proc.stderr, ready), name=f"tmux-control:{self.label}"
            )
            try:
                await asyncio.wait_for(asyncio.shield(ready), CONNECT_TIMEOUT_S)
            except TimeoutError:
                await self._stop_process()
                raise TmuxError(f"{self.label} did not answer within {CONNECT_TIMEOUT_S:g} s") from None
            return stdin

    async def _read(
        self, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader, ready: asyncio.Future[None]
    ) -> None:
        """Match reply blocks to self.pending until the process ends; ready resolves at the attach's reply."""
        guard: bytes | None = None  # "TIME NUMBER FLAGS" of the open block
        lines: list[str] = []
        try:
            while line := await stdout.readline():
                line = line.rstrip(b"\n")
                if guard is None:
                    if line.startswith(b"%begin "):
                        guard, lines = line[7:], []
                    elif line.startswith(b"%exit"):
                        self.exit_reason = line[6:].decode("utf-8", "replace")
                    continue  # a notification: the attach's session changes, windows added...
                if (line.startswith(b"%end ") and line[5:] == guard) or (
                    line.startswith(b"%error ") and line[7:] == guard
                ):
                    self._finish(guard, line.startswith(b"%end "), lines, ready)
                    guard = None
                else:
                    lines.append(line.decode("utf-8", "replace"))
        finally:
            reason = await self._why_closed(stderr)
            if not ready.done():
                ready.set_exception(TmuxError(reason))
            while self.pending:
                fut = self.pending.popleft()
                if not fut.done():
                    fut.set_exception(TmuxError(reason))

    def _finish(self, guard: bytes, ok: bool, lines: list[str], ready: asyncio.Future[None]) -> None:
        if not guard.endswith(b" 1"):  # the attach-session of the command line, not one of ours
            if ok and not ready.done():
                ready.set_result(None)
            elif not ok and not ready.done():
                ready.set_exception(TmuxError(f"cannot attach to {self.label}: {' '.join(lines)}"))
            return
        if not self.pending:
            return
        fut = self.pending.popleft()
        if not fut.done():  # the caller may have been cancelled meanwhile
            fut.set_result((ok, lines))

    async def _why_closed(self, stderr: asyncio.StreamReader) -> str:
        err = b""
        with contextlib.suppress(Exception):
            err = await asyncio.wait_for(stderr.read(), 1.0)
        detail = err.decode("utf-8", "replace").strip() or self.exit_reason or "the connection closed"
        return f"{self.label} is not reachable: {detail}"

    async def _stop_process(self) -> None:
        proc, stdin = self.proc, self.stdin
        self.proc = self.stdin = None
        if proc is None or stdin is None:  # both None, or both set
            return
        if proc.returncode is None:
            stdin.close()  # end of input: a control client detaches and exits
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)
            self.reader = None

    async def close(self) -> None:
        async with self.lock:
            await self._stop_process()


def _checked(outcome: _Reply) -> list[str]:
    ok, lines = outcome
    if not ok:
        raise TmuxError(" ".join(lines) or "tmux refused the command", command_failed=True)
    return lines


_connections: dict[tuple[str, ...], Connection] = {}


def acquire(server: tuple[str, ...]) -> Connection:
    """The shared connection to this server (not yet connected: the first command connects)."""
    conn = _connections.setdefault(server, Connection(server))
    conn.users += 1
    return conn


async def release(conn: Connection) -> None:
    conn.users -= 1
    if conn.users <= 0:
        _connections.pop(conn.server, None)
        await conn.close()
