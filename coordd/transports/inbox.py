"""The inbox transport: one Markdown file per message in the agent's inbox directory.

Files are named by message id (`<id:012d>.md`, so `ls` lists them in delivery
order) and written to a temp file, then renamed: a reader never sees half a
message, and a re-delivery of the same id replaces the file instead of adding a
second one. Nothing already at either path is ever opened: a link planted at
the temp or the final name cannot redirect or truncate another file (_create).
Files are 0600, or the agent's `file_mode`, whatever the umask or the directory.

The files are written on the event-loop thread, `chunk` at a time, and all inbox
agents take turns: one chunk per pass of the loop, so sends are read and
acknowledged between chunks. Not in a worker thread: measured, a thread doing
many small file syscalls fights the loop for the GIL and slowed accepting sends
several-fold (perf/README.md). With `fsync = true` each file waits for the disk,
so that case does go to a thread.

A write that fails for a reason that says nothing about the message (DOWN_ERRNOS:
the disk or quota full, no file descriptors left, permission denied, a read-only
file system) raises TransportDown: the agent is `down` with the reason, its
messages wait without spending attempts, and go out once the cause is gone.
Anything else (a file in the way of the directory, an I/O error) fails the
attempt, retried with backoff, then `failed`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import time
from json.encoder import encode_basestring

from coordctl.protocol import DEFAULT_KIND
from coordd.config import InboxAgent
from coordd.transports import DeliveryError, Record, Transport, TransportDown, sender_shown
from coordd.turns import next_turn


def render(m: Record) -> str:
    """The file: a header of `key: value` lines between `---` lines, then the body.

    Every value is JSON (a string quoted and escaped), so no value can hold a line break or end the
    header: what a sender, kind or tag says can never read as another field. (An agent id and a priority
    are validated names, plain ASCII: quoted as they are.)
    """
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m.created))
    lines = [
        "---",
        f"id: {m.id}",
        f"from: {_quote(sender_shown(m))}",
        f'to: "{m.agent}"',
        f'priority: "{m.priority}"',
        f"kind: {_quote(m.kind or DEFAULT_KIND)}",
        f'time: "{created}"',
    ]
    if m.tags:
        lines.append(f"tags: [{', '.join(map(_quote, m.tags))}]")
    if m.subject is not None:
        lines.append(f"subject: {_quote(m.subject)}")
    if m.reply_to is not None:
        lines += [f"reply_to: {m.reply_to}", f"thread: {m.thread}"]
    lines += ["---", "", m.body, ""]
    return "\n".join(lines)


_UNESCAPED_BREAKS = re.compile(r"[\x80-\x9f\u2028\u2029]")  # C1 (NEL is a line break) and the separators


def _quote(value: str) -> str:
    """value as a JSON string. encode_basestring is json.dumps's own C encoder for a str, without the
    call's overhead (0.13 us against 1.9 us a value). JSON leaves U+2028, U+2029 and C1 controls as they
    are, and some readers (Python's splitlines, YAML 1.1) break lines on them: those are escaped too."""
    quoted = encode_basestring(value)
    if not quoted.isascii():
        quoted = _UNESCAPED_BREAKS.sub(lambda c: f"\\u{ord(c[0]):04x}", quoted)
    return quoted


# Errors of the environment, not of the message: the agent is down until they are gone.
DOWN_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.EACCES, errno.EPERM, errno.EROFS}
)

_turns: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}


def _turn() -> asyncio.Lock:
    """The lock inbox agents take turns on (one per event loop)."""
    loop = asyncio.get_running_loop()
    return _turns.setdefault(loop, asyncio.Lock())


class InboxTransport(Transport):
    name = "inbox"

    def __init__(self, agent: InboxAgent) -> None:
        self.dir = agent.inbox_dir
        self.fsync = agent.fsync
        self.max_batch = agent.chunk
        self.file_mode = int(agent.file_mode, 8)  # validated by config: 0600 unless the agent widens it
        self._dir_fd: int | None = None  # the inbox directory, kept open between deliveries
        self._dir_id: tuple[int, int] = (0, 0)  # its (st_dev, st_ino)

    async def close(self) -> None:
        self._close_dir()

    def health(self) -> str | None:
        return None  # a full disk or an unwritable directory is found by writing (deliver raises TransportDown)

    def idle(self, queued: int, unacked: int) -> bool | None:
        # An inbox agent takes its work by reading and acknowledging it: idle once it has acknowledged all.
        return unacked == 0

    async def deliver(self, messages: list[Record]) -> None:
        if self.fsync:
            done, error = await asyncio.get_running_loop().run_in_executor(None, self._write_all, messages)
        else:
            async with _turn():
                done, error = self._write_all(messages)
                await next_turn()  # keep the turn for one pass of the loop
        if error is not None:
            reason, code = error
            if code in DOWN_ERRNOS:
                raise TransportDown(reason, delivered=done)
            raise DeliveryError(reason, delivered=done)

    def _write_all(self, messages: list[Record]) -> tuple[int, tuple[str, int | None] | None]:
        """How many were written, in order, and why the next one was not (and its errno).

        Raw os calls, relative to a directory fd: four syscalls a file (open, write,
        close, rename), where open() in text mode adds three more.
        """
        try:
            dir_fd = self._open_dir()
        except FileExistsError:
            return 0, (f"inbox {self.dir} exists but is not a directory", None)
        except OSError as e:
            return 0, (f"cannot open inbox {self.dir}: {e.strerror}", e.errno)
        for n, m in enumerate(messages):
            name, tmp = f"{m.id:012d}.md", f".{m.id:012d}.md.tmp"
            try:
                fd = self._create(tmp, dir_fd)
                try:
                    data = memoryview(render(m).encode())
                    while data:  # a regular file takes it all at once, barring a signal
                        data = data[os.write(fd, data) :]
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                # rename replaces the entry at `name` whatever it is, a symbolic link or a hard link to
                # another file included: what it pointed to is left as it was.
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as e:
                self._close_dir()  # opened afresh on the next try, in case the directory is the trouble
                return n, (f"cannot write {os.path.join(self.dir, name)}: {e.strerror}", e.errno)
        return len(messages), None

    def _create(self, tmp: str, dir_fd: int) -> int:
        """A new temp file: never one already there. O_EXCL fails on whatever is at the path, so a symbolic
        link (which O_NOFOLLOW would refuse too) or a hard link to another file is never opened; that
        entry, or a temp file a crash left, is unlinked (the name goes, not what it points to) and the
        file is created once more. A second failure fails the delivery, to be retried."""
        try:
            fd = os.open(tmp, _CREATE, self.file_mode, dir_fd=dir_fd)
        except FileExistsError:
            os.unlink(tmp, dir_fd=dir_fd)
            fd = os.open(tmp, _CREATE, self.file_mode, dir_fd=dir_fd)
        if self.file_mode != 0o600:  # wider than the daemon's umask (0077) lets open() make it
            try:
                os.fchmod(fd, self.file_mode)
            except OSError:
                os.close(fd)
                raise
        return fd

    def _open_dir(self) -> int:
        """The inbox directory's fd: made and opened once, and again whenever the path no longer names the
        directory it is open on (deleted, replaced, renamed), so that no file goes into a directory nobody
        sees. One stat a delivery, where makedirs and open cost four syscalls more."""
        try:
            st: os.stat_result | None = os.stat(self.dir)
        except OSError:
            st = None  # missing, or a parent is not a directory: makedirs makes it or says why not
        if st is not None and self._dir_fd is not None and (st.st_dev, st.st_ino) == self._dir_id:
            return self._dir_fd
        self._close_dir()
        os.makedirs(self.dir, mode=0o700, exist_ok=True)  # FileExistsError: a file is in the way
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        self._dir_fd, self._dir_id = fd, (st.st_dev, st.st_ino)
        return fd

    def _close_dir(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
