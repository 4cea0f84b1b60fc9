"""The inbox transport: one Markdown file per message in the agent's inbox directory.

Files are named by message id (`<id:012d>.md`, so `ls` lists them in delivery
order) and written to a temp file, then renamed: a reader never sees half a
message, and a re-delivery of the same id replaces the file instead of adding a
second one. Nothing already at either path is ever opened: a link planted at
the temp or the final name cannot redirect or truncate another file (_create).
Files are 0600, or the agent's `file_mode`, whatever the umask or the directory.

The files are rendered on the event-loop thread and written in a worker thread,
`chunk` at a time, and all inbox agents take turns: one chunk being written at
once. The thread holds the GIL for little more than the syscalls' glue (the
bytes are ready), and the loop goes on reading and acknowledging sends while the
kernel creates the files: creating a file costs 50 us on a tmpfs, 0.2-5 ms on an
ext4 disk shared with other work (measured: perf/README.md), and on the loop
thread every send read meanwhile waited for it.

A write that fails for a reason that says nothing about the message (DOWN_ERRNOS:
the disk or quota full, no file descriptors left, permission denied, a read-only
file system) raises TransportDown: the agent is `down` with the reason, its
messages wait without spending attempts, and go out once the cause is gone.
Anything else (a file in the way of the directory, an I/O error) fails the
attempt, retried with backoff, then `failed`.

Retention ([retention] inbox_max_files, inbox_max_age_days): the transport keeps the
ids of the message files in its directory, sorted, so the file count costs nothing to
read (`files`) and the oldest are known without listing the directory. A delivery that
takes the count past inbox_max_files removes the oldest at once: the loop picks them, the
file thread unlinks them after writing the delivery's files (on the loop, 12,002 unlinks
took 0.32 s of 20,000 sequential sends under cProfile, once the bound was reached); the age bound, and a
fresh listing (files an agent deleted or a previous run left), come from
coordd.inbox_retention every prune_interval_s, in chunks. Only names this transport
writes (`<id:012d>.md`) are ever removed, by unlink relative to the kept directory fd
(which removes a link, never what it points to), and never a file of the batch being
written.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import functools
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring
from queue import SimpleQueue
from typing import TypeVar

from coordctl.protocol import DEFAULT_KIND
from coordd.config import InboxAgent, Retention
from coordd.transports import DeliveryError, Record, Transport, TransportDown, sender_shown
from coordd.turns import next_turn

T = TypeVar("T")


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


class _FileThread:
    """The thread that writes the inbox files of every agent (one per event loop), a chunk per job, in the order
    the jobs come: agents take turns. A job's result comes back with call_soon_threadsafe: on the loop thread that
    costs half of what run_in_executor does (which chains a concurrent future to an asyncio one)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.jobs: SimpleQueue[tuple[asyncio.Future, Callable[[], object]]] = SimpleQueue()
        threading.Thread(target=self._run, name="coordd-inbox", daemon=True).start()

    def run(self, job: Callable[[], T]) -> asyncio.Future[T]:
        fut = self.loop.create_future()
        self.jobs.put((fut, job))
        return fut

    def _run(self) -> None:
        while True:
            fut, job = self.jobs.get()
            result, error = None, None
            try:
                result = job()
            except BaseException as e:  # handed to the task that awaits it, whatever it is
                error = e
            try:
                self.loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return


def _settle(fut: asyncio.Future, result: object, error: BaseException | None) -> None:
    if not fut.cancelled():
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)


_threads: dict[asyncio.AbstractEventLoop, _FileThread] = {}


def _file_thread() -> _FileThread:
    loop = asyncio.get_running_loop()
    thread = _threads.get(loop)
    if thread is None:
        thread = _threads[loop] = _FileThread(loop)
    return thread


class InboxTransport(Transport):
    name = "inbox"

    def __init__(self, agent: InboxAgent, retention: Retention) -> None:
        self.dir = agent.inbox_dir
        self.fsync = agent.fsync
        self.max_batch = agent.chunk
        self.file_mode = int(agent.file_mode, 8)  # validated by config: 0600 unless the agent widens it
        self._dir_fd: int | None = None  # the inbox directory, kept open between deliveries
        self._dir_id: tuple[int, int] = (0, 0)  # its (st_dev, st_ino)
        self.max_files = 0
        self.max_age_s = 0.0
        self.bound(retention)
        self._ids: list[int] = []  # the ids of the message files in the directory, ascending
        self._listed = False  # _ids holds every file (the directory has been listed), not only those written since
        self._writing: set[int] = set()  # the ids of the batch being written: never removed
        self._listing: tuple[set[int], set[int]] | None = None  # (added, removed) while a listing is under way
        self._closed = False

    def bound(self, retention: Retention) -> None:
        """Apply [retention]'s inbox bounds (at start and on a reload)."""
        self.max_files = retention.inbox_max_files
        self.max_age_s = retention.inbox_max_age_days * 86400

    async def close(self) -> None:
        self._closed = True
        self._close_dir()

    def files(self) -> int | None:
        return len(self._ids) if self._listed else None

    def health(self) -> str | None:
        return None  # a full disk or an unwritable directory is found by writing (deliver raises TransportDown)

    def idle(self, queued: int, unacked: int) -> bool | None:
        # An inbox agent takes its work by reading and acknowledging it: idle once it has acknowledged all.
        return unacked == 0

    async def deliver(self, messages: list[Record]) -> None:
        self._writing = {m.id for m in messages}
        try:
            data = [render(m).encode() for m in messages]  # here: the thread then holds the GIL the least
            doomed = self._past_bound(messages)
            dir_id = self._dir_id
            job = functools.partial(self._write_all, messages, data, doomed, dir_id)
            # With fsync each file waits for the disk: agents' fsyncs go on side by side in the executor.
            work = asyncio.get_running_loop().run_in_executor(None, job) if self.fsync else _file_thread().run(job)
            done, error, gone = await work
            self._written(messages[:done], gone, pruned=error is None)
        finally:
            self._writing = set()
        if error is not None:
            reason, code = error
            if code in DOWN_ERRNOS:
                raise TransportDown(reason, delivered=done)
            raise DeliveryError(reason, delivered=done)

    # --- retention: the bookkeeping on the loop thread, the removals through the kept directory fd ---------

    def _past_bound(self, messages: list[Record]) -> list[int]:
        """The oldest files that writing `messages` takes past max_files: the file thread removes them once
        the messages are written (an unlink cost the loop 20-30 us a delivery). At most twice as many as are
        written: a backlog a listing found goes in the retention passes' chunks."""
        if not self.max_files:
            return []
        ids = self._ids
        new = sum(1 for m in messages if not ids or m.id > ids[-1] or not self._has(m.id))
        over = len(ids) + new - self.max_files
        return list(itertools.islice(self._oldest(), min(over, 2 * len(messages)))) if over > 0 else []

    def _has(self, message_id: int) -> bool:
        i = bisect.bisect_left(self._ids, message_id)
        return i < len(self._ids) and self._ids[i] == message_id

    def _written(self, messages: list[Record], gone: list[int], pruned: bool) -> None:
        """Count the files just written and forget those the thread removed (`pruned`: it did its part; not
        when a write failed half way, and then the oldest past max_files are removed here)."""
        for m in messages:
            self._add(m.id)
        self._forget(gone)
        if not pruned and messages and self.max_files and len(self._ids) > self.max_files:
            self.prune_count(2 * len(messages))

    def _add(self, message_id: int) -> None:
        ids = self._ids
        if not ids or message_id > ids[-1]:  # the usual case: a new message, the newest file
            ids.append(message_id)
        else:
            i = bisect.bisect_left(ids, message_id)
            if i == len(ids) or ids[i] != message_id:  # else a re-delivery replaced the file
                ids.insert(i, message_id)
        if self._listing is not None:
            self._listing[0].add(message_id)

    def busy(self) -> bool:
        """A delivery is under way: a retention pass leaves this inbox for now (the fd may be reopened)."""
        return bool(self._writing)

    def prune_count(self, limit: int) -> int:
        """Remove up to `limit` of the oldest files past max_files; return how many went."""
        over = len(self._ids) - self.max_files if self.max_files else 0
        return self._remove(self._oldest(), min(over, limit)) if over > 0 else 0

    def prune_age(self, now: float, limit: int) -> int:
        """Remove up to `limit` of the oldest files modified more than max_age_s ago; return how many went.
        Oldest by id, so it stops at the first file young enough (ids and write times rise together)."""
        if not self.max_age_s or self._dir_fd is None:
            return 0
        cutoff, fd = now - self.max_age_s, self._dir_fd

        def old() -> Iterator[int]:
            for message_id in self._oldest():
                try:
                    st = os.stat(_name(message_id), dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    yield message_id  # gone already (the agent deleted it): _remove forgets it
                    continue
                except OSError:
                    return
                if st.st_mtime >= cutoff:
                    return
                yield message_id

        return self._remove(old(), limit)

    def _oldest(self) -> Iterator[int]:
        return (i for i in self._ids if i not in self._writing)

    def _remove(self, candidates: Iterator[int], limit: int) -> int:
        fd = self._dir_fd
        if fd is None or limit <= 0:
            return 0
        gone = _unlink(candidates, limit, fd)
        self._forget(gone)
        return len(gone)

    def _forget(self, gone: list[int]) -> None:
        """Drop the ids of removed files from the count."""
        if gone:
            if self._ids[: len(gone)] == gone:  # the usual case: the oldest went
                del self._ids[: len(gone)]
            else:  # some of the batch being written came first
                drop = set(gone)
                self._ids = [i for i in self._ids if i not in drop]
            if self._listing is not None:
                self._listing[1].update(gone)

    async def list_files(self, chunk: int) -> None:
        """List the directory afresh (what the agent deleted, what a previous run left), `chunk` entries a turn;
        only names this transport writes count. A directory not made yet holds none."""
        if self._closed:
            return
        try:
            fd = self._open_dir(create=False)
        except OSError:
            fd = None
        if fd is None:
            self._ids, self._listed = [], True
            return
        dir_id, self._listing = self._dir_id, (set(), set())
        found: list[int] = []
        try:
            with os.scandir(fd) as entries:
                for n, entry in enumerate(entries, 1):
                    if _OURS.match(entry.name):
                        found.append(int(entry.name[:12]))
                    if n % chunk == 0:
                        await next_turn()
            added, removed = self._listing
        except OSError:
            return
        finally:
            self._listing = None
        if self._dir_id != dir_id or self._closed:  # the directory was replaced meanwhile: the next pass lists it
            return
        self._ids = sorted((set(found) - removed) | added)
        self._listed = True

    def _write_all(
        self, messages: list[Record], data: list[bytes], doomed: list[int], dir_id: tuple[int, int]
    ) -> tuple[int, tuple[str, int | None] | None, list[int]]:
        """In the worker thread: how many were written (data[i] the file of messages[i]), in order; why the
        next one was not (and its errno); and which of the `doomed` files (the oldest past max_files, chosen
        on the loop in the directory `dir_id`) were then removed: none unless all were written.

        Raw os calls, relative to a directory fd: four syscalls a file (open, write,
        close, rename), where open() in text mode adds three more.
        """
        try:
            dir_fd = self._open_dir()
            assert dir_fd is not None  # made if missing
        except FileExistsError:
            return 0, (f"inbox {self.dir} exists but is not a directory", None), []
        except OSError as e:
            return 0, (f"cannot open inbox {self.dir}: {e.strerror}", e.errno), []
        for n, m in enumerate(messages):
            name, tmp = _name(m.id), f".{m.id:012d}.md.tmp"
            try:
                fd = self._create(tmp, dir_fd)
                try:
                    left = memoryview(data[n])
                    while left:  # a regular file takes it all at once, barring a signal
                        left = left[os.write(fd, left) :]
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                # rename replaces the entry at `name` whatever it is, a symbolic link or a hard link to
                # another file included: what it pointed to is left as it was.
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as e:
                self._close_dir()  # opened afresh on the next try, in case the directory is the trouble
                return n, (f"cannot write {os.path.join(self.dir, name)}: {e.strerror}", e.errno), []
        # Not in another directory than the one the doomed were counted in (replaced since: a listing counts it).
        gone = _unlink(iter(doomed), len(doomed), dir_fd) if self._dir_id == dir_id else []
        return len(messages), None, gone

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

    def _open_dir(self, create: bool = True) -> int | None:
        """The inbox directory's fd: made and opened once, and again whenever the path no longer names the
        directory it is open on (deleted, replaced, renamed), so that no file goes into a directory nobody
        sees. One stat a delivery, where makedirs and open cost four syscalls more. Without `create`, None
        for a directory that does not exist."""
        try:
            st: os.stat_result | None = os.stat(self.dir)
        except OSError:
            st = None  # missing, or a parent is not a directory: makedirs makes it or says why not
        if st is not None and self._dir_fd is not None and (st.st_dev, st.st_ino) == self._dir_id:
            return self._dir_fd
        self._close_dir()
        if st is None and not create:
            return None
        made = st is None
        os.makedirs(self.dir, mode=0o700, exist_ok=True)  # FileExistsError: a file is in the way
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._dir_id:  # another directory: what was counted is not in it
            self._ids, self._listed = [], made  # one just made holds nothing; another is listed by the next pass
        self._dir_fd, self._dir_id = fd, (st.st_dev, st.st_ino)
        return fd

    def _close_dir(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def _name(message_id: int) -> str:
    return f"{message_id:012d}.md"


def _unlink(candidates: Iterator[int], limit: int, dir_fd: int) -> list[int]:
    """Remove up to `limit` of the candidates' files in the directory dir_fd; the ids gone (a file already
    gone counts). Stops at the first other error (permissions, a read-only file system): the next pass tries."""
    gone: list[int] = []
    for message_id in candidates:
        if len(gone) == limit:
            break
        try:
            os.unlink(_name(message_id), dir_fd=dir_fd)  # the name goes: a link's target is left alone
        except FileNotFoundError:
            pass
        except OSError:
            break
        gone.append(message_id)
    return gone


_OURS = re.compile(r"\d{12}\.md\Z")  # the names _name gives: retention removes no other file
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
