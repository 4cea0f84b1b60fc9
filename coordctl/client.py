"""The blocking client: one AF_UNIX connection, one request at a time.

Kept free of asyncio (see ``aclient`` for that) so that scripts and the CLI
start fast. ``send`` is the hot path: it reuses one write buffer and one read
buffer, so a call costs one ``sendall`` and usually one ``recv_into``.

A Client is not thread-safe; give each thread its own.
"""

from __future__ import annotations

import _socket  # not `socket`: its enums cost more than the rest of a send (see perf/README.md)
import struct
from typing import TYPE_CHECKING

import msgspec

from coordctl import protocol, trust
from coordctl.errors import CoordError, DaemonUnavailable, error_for, raise_for
from coordctl.operations import MAX_REPLY_BYTES, BlockingOperations, expect, to_new_messages

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import NoReturn

# Grouped, not sorted: what this module defines, then what it re-exports.
__all__ = [  # noqa: RUF022
    "MAX_REPLY_BYTES",
    "START_HINT",
    "Client",
    "check_directory",
    "check_peer",
    "reply_too_large",
    "unreachable",
    # once defined here, still importable from here:
    "CoordError",
    "DaemonUnavailable",
    "error_for",
    "expect",
    "raise_for",
    "to_new_messages",
]

_HEADER = struct.Struct(">I")
_READ_CHUNK = 64 * 1024
_MAX_IDLE_BUFFER = 1 << 20
# Pipelined requests go out in windows of at most this many bytes, and each
# window's replies are read before the next is written. A window fits in the
# kernel's socket buffer, so sendall cannot block on a daemon that has itself
# stopped reading because our unread replies filled its write buffer.
_PIPELINE_WINDOW = 64 * 1024

START_HINT = "is coordd running? start it with `coordd run` or `systemctl --user start coordd`"


def unreachable(path: str, exc: OSError) -> DaemonUnavailable:
    """The error for a failed connect, saying how to start the daemon."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return DaemonUnavailable(f"cannot connect to coordd at {path} ({reason}); {START_HINT}")


def check_directory(path: str, trusted: frozenset[int]) -> None:
    """Refuse, before connecting, a socket in a directory another user owns or may write (see ``trust``)."""
    try:
        problem = trust.directory_problem(path, trusted)
    except OSError as e:
        raise unreachable(path, e) from e
    if problem:
        raise CoordError("untrusted_socket", problem)


def check_peer(sock: _socket.socket, path: str, trusted: frozenset[int]) -> None:
    """Refuse, before sending anything, a socket on which another user's process listens."""
    problem = trust.peer_problem(sock, path, trusted)
    if problem:
        raise CoordError("untrusted_socket", problem)


def reply_too_large(size: int, limit: int, path: str) -> CoordError:
    return CoordError(
        "protocol_error",
        f"a reply of {size:,} bytes from {path} is over this client's limit of "
        f"{limit:,} bytes (max_reply_bytes): raise it if coordd's "
        "daemon.max_frame_bytes or its messages are that large",
    )


class Client(BlockingOperations):
    """A blocking connection to coordd. Connects on first use, and again on the
    next call after any connection error. A call that fails is not retried,
    since the daemon may have acted on it, with one exception: a request
    written to a connection the daemon had already closed (say it restarted
    since the last call) is sent again on a new one, as it cannot have been read.

    ``timeout`` (seconds) bounds the connect and each wait for a reply; the
    default ``None`` waits as long as it takes and is also the fastest, as a
    socket with a timeout polls before every read and write.

    Each connection is checked before anything is sent on it: the socket's
    directory must belong to us (or root, or a uid in ``allow_uids``) and be
    writable by no one else, and the process listening must run as one of
    those uids; else ``untrusted_socket``. ``allow_uids`` defaults to
    ``$COORDD_ALLOW_UIDS``. A reply over ``max_reply_bytes`` is refused
    (``protocol_error``) unread.
    """

    def _init_connection(self) -> None:
        self._sock: _socket.socket | None = None
        self._wbuf = bytearray(_HEADER.size)
        self._rbuf = bytearray(_READ_CHUNK)
        self._rview = memoryview(self._rbuf)
        self._rpos = 0  # start of unread data in _rbuf
        self._rend = 0  # end of unread data in _rbuf

    # --- connection ------------------------------------------------------------

    def connect(self) -> None:
        """Connect now rather than on the first call (idempotent)."""
        if self._sock is None:
            self._connect()

    def _connect(self) -> _socket.socket:
        check_directory(self.socket_path, self._trusted)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError as e:
            sock.close()
            raise unreachable(self.socket_path, e) from e
        try:
            check_peer(sock, self.socket_path, self._trusted)
        except CoordError:
            sock.close()
            raise
        self._sock = sock
        self._rpos = self._rend = 0
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the generic request/reply --------------------------------------------

    def call(self, req: protocol.Request) -> protocol.Reply:
        """Send one request and return its reply; an Error reply is raised as CoordError.

        Assigns ``req.rid``. The building block of every method below.
        """
        return self._call(req, self.timeout)

    def _call(self, req: protocol.Request, timeout: float | None) -> protocol.Reply:
        self._rid = rid = self._rid + 1
        req.rid = rid
        buf = self._wbuf
        protocol.encoder.encode_into(req, buf, _HEADER.size)
        _HEADER.pack_into(buf, 0, len(buf) - _HEADER.size)
        try:
            sock = self._write(buf, timeout)
            reply: protocol.Reply = protocol.reply_decoder.decode(self._read_frame())
            if timeout != self.timeout:
                sock.settimeout(self.timeout)
        except BaseException as e:
            err = self._broken(e)
            if err is e:
                raise
            raise err from e
        if reply.rid != rid:
            self._mismatch(reply)
        if type(reply) is protocol.Error:
            raise_for(reply)
        return reply

    def _broken(self, e: BaseException) -> BaseException:
        """The exception to raise for a failure mid-call (even ^C): the
        connection is dropped, since the stream may now be out of step."""
        waited = self._sock.gettimeout() if self._sock is not None else self.timeout
        self.close()
        if isinstance(e, TimeoutError):
            return DaemonUnavailable(f"no reply from coordd at {self.socket_path} within {waited:g} s")
        if isinstance(e, OSError):
            return DaemonUnavailable(f"connection to coordd at {self.socket_path} lost ({e.strerror or e})")
        if isinstance(e, msgspec.DecodeError):
            return CoordError("protocol_error", f"undecodable reply from coordd: {e}")
        return e

    def _mismatch(self, reply: protocol.Reply) -> NoReturn:
        # The stream is out of step with us: start afresh on the next call.
        self.close()
        if type(reply) is protocol.Error and reply.rid == 0:
            raise_for(reply)  # a connection-level error (too_large, forbidden, ...)
        raise CoordError("protocol_error", f"reply rid {reply.rid} matches no request in flight")

    def _write(self, data: bytearray, timeout: float | None, *, one_frame: bool = True) -> _socket.socket:
        """Send ``data`` (whole frames), connecting first if need be."""
        reused = self._sock is not None
        sock = self._sock or self._connect()
        if timeout != self.timeout:
            sock.settimeout(timeout)
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            # The daemon may have closed on us with its reason (too_large,
            # forbidden, unavailable) already waiting to be read.
            self._raise_pending_error()
            if not (reused and one_frame):
                raise
            # Else the daemon closed this idle connection (it restarted, say)
            # before our one frame was all written, so it cannot have acted on
            # it: sending it again on a new connection duplicates nothing.
            # (Of several frames, the first ones may have been acted on.)
            self.close()
            return self._write(data, timeout)
        return sock

    def _raise_pending_error(self) -> None:
        try:
            reply = protocol.reply_decoder.decode(self._read_frame())
        except (OSError, CoordError, msgspec.DecodeError):
            return
        if type(reply) is protocol.Error:
            self.close()
            raise_for(reply)

    # --- framing ---------------------------------------------------------------

    def _read_frame(self) -> memoryview:
        """The next frame's body, as a view valid until the next read."""
        if self._rend - self._rpos < _HEADER.size:
            self._fill(_HEADER.size)
        (n,) = _HEADER.unpack_from(self._rbuf, self._rpos)
        if n > self.max_reply_bytes:
            raise reply_too_large(n, self.max_reply_bytes, self.socket_path)
        if self._rend - self._rpos < _HEADER.size + n:
            self._fill(_HEADER.size + n)
        start = self._rpos + _HEADER.size
        self._rpos = end = start + n
        return self._rview[start:end]

    def _fill(self, need: int) -> None:
        """Read until at least ``need`` unread bytes are buffered."""
        pos, end = self._rpos, self._rend
        if pos == end:
            pos = end = 0
            if len(self._rbuf) > _MAX_IDLE_BUFFER:  # a huge reply is gone: give its memory back
                self._rbuf = bytearray(_READ_CHUNK)
                self._rview = memoryview(self._rbuf)
        elif pos + need > len(self._rbuf):
            # Not enough room after the partial frame: move it to the front of
            # a buffer big enough for the whole frame.
            pending = bytes(self._rview[pos:end])
            if need > len(self._rbuf):
                self._rbuf = bytearray(max(need, _READ_CHUNK))
                self._rview = memoryview(self._rbuf)
            pos, end = 0, len(pending)
            self._rview[:end] = pending
        while end - pos < need:
            n = self._sock.recv_into(self._rview[end:])  # type: ignore[union-attr]
            if not n:
                self._rpos = self._rend = 0
                what = "mid-reply" if end > pos else "before replying"
                self.close()
                raise DaemonUnavailable(f"connection closed by coordd {what} (is it stopping or restarting?)")
            end += n
        self._rpos, self._rend = pos, end

    # --- pipelining --------------------------------------------------------------

    def pipeline(self, requests: Iterable[protocol.Request]) -> list[protocol.Reply]:
        """Send many requests without waiting for each reply.

        Returns the replies in request order; Error replies are returned, not
        raised (connection-level failures still raise). Assigns each ``rid``.
        """
        reqs = list(requests)
        replies: list[protocol.Reply | None] = [None] * len(reqs)
        i = 0
        while i < len(reqs):
            out = bytearray()
            index: dict[int, int] = {}
            while i < len(reqs) and len(out) < _PIPELINE_WINDOW:
                self._rid += 1
                reqs[i].rid = self._rid
                index[self._rid] = i
                body = protocol.encoder.encode(reqs[i])
                out += _HEADER.pack(len(body))
                out += body
                i += 1
            self._exchange(out, index, replies)
        return replies  # type: ignore[return-value]

    def _exchange(self, out: bytearray, index: dict[int, int], replies: list[protocol.Reply | None]) -> None:
        try:
            self._write(out, self.timeout, one_frame=False)
            while index:
                reply = protocol.reply_decoder.decode(self._read_frame())
                slot = index.pop(reply.rid, None)
                if slot is None:
                    self._mismatch(reply)
                replies[slot] = reply
        except BaseException as e:
            err = self._broken(e)
            if err is e:
                raise
            raise err from e

    # --- the operations (each defined once, in operations.Operations) -----------

    def watch(
        self,
        *,
        agents: Iterable[str] = (),
        events: Iterable[protocol.EventType] = (),
        idle: Callable[[], object] | None = None,
    ) -> Iterator[protocol.Event | protocol.Missed]:
        """Events as they happen (``Event``; ``Missed`` when this watcher fell behind and events were dropped).

        Returns once the daemon has subscribed, so every event after that is seen.
        The connection then carries only the stream, waiting as long as it takes
        between events: make other calls on another Client. Ending the iteration
        (``break``, ``close()``) closes the connection, which ends the watch.
        ``idle`` is called whenever the stream is about to wait for the daemon
        (all events received so far are handled): e.g. to flush buffered output.
        """
        req = protocol.Watch(agents=list(agents), events=list(events), protocol=protocol.PROTOCOL_VERSION)
        expect(self.call(req), protocol.Watching)
        return self._stream(req.rid, idle)

    def _frame_ready(self) -> bool:
        have = self._rend - self._rpos
        return have >= _HEADER.size and have >= _HEADER.size + _HEADER.unpack_from(self._rbuf, self._rpos)[0]

    def _stream(self, rid: int, idle: Callable[[], object] | None) -> Iterator[protocol.Event | protocol.Missed]:
        try:
            if self._sock is not None:
                self._sock.settimeout(None)  # a quiet hour between events is fine
            while True:
                if idle is not None and not self._frame_ready():
                    idle()
                try:
                    reply: protocol.Reply = protocol.reply_decoder.decode(self._read_frame())
                except DaemonUnavailable:
                    raise DaemonUnavailable(
                        f"coordd at {self.socket_path} closed the connection, which ends the "
                        "watch (is it stopping or restarting?)"
                    ) from None
                except (OSError, msgspec.DecodeError) as e:
                    raise self._broken(e) from e
                if reply.rid != rid:
                    self._mismatch(reply)
                if type(reply) is protocol.Events:
                    yield from reply.events
                elif type(reply) is protocol.Error:
                    raise_for(reply)
                else:
                    yield reply  # type: ignore[misc]
        finally:
            self.close()
