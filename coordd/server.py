"""The Unix-socket server: framing, the frame-size cap, peer credentials, pipelining, bounds.

One Connection per client, an asyncio.Protocol: bytes are parsed into frames as
they arrive, each request runs as its own task (so a slow one, such as a send
with wait, never holds up the others on the connection) and its reply carries
the request's rid. The frame-size cap is checked on the 4-byte prefix before
any body byte is buffered.

What one client can cost is bounded, so that no client can starve the others:
- at most MAX_IN_FLIGHT requests per connection are handled at once; further
  frames wait unparsed and the socket is not read meanwhile;
- once daemon.max_write_buffer_bytes of replies wait for a client to read them,
  its requests are not read and its further replies wait (in `outbox`, at most
  MAX_IN_FLIGHT of them) until it reads; if it reads nothing for
  daemon.idle_timeout_s meanwhile it is dropped;
- requests with large replies (HEAVY) run a few at a time in all, one per
  connection, and only while their client reads;
- a connection with no request in flight and no traffic for daemon.idle_timeout_s
  is closed (clients reconnect on their next call);
- a frame begun must be whole within daemon.frame_timeout_s, or the connection is closed;
- at daemon.max_connections a new connection closes the one idle longest (see `evictable`) to make
  room, so stuck clients cannot lock the others out; with none idle it gets `unavailable`;
- msgspec decodes recursively: a frame nested past Python's recursion limit is a bad_request (rid 0) like
  any other undecodable frame, never an error that drops the connection.
A client that shuts down its write side still gets the replies to what it sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import struct
import time
from collections import deque
from typing import cast

import msgspec

from coordctl import protocol as p
from coordd import events
from coordd.config import Daemon as DaemonConfig
from coordd.handlers import Handlers
from coordd.hooks import NO_HOOKS, Hooks
from coordd.model import Refused

log = logging.getLogger("coordd.server")

MAX_IN_FLIGHT = 64  # requests handled at once per connection
# Requests whose replies can be large and that read through the store's reader thread. At most
# HEAVY_AT_ONCE run at once in all, one per connection, and never for a client that is not reading
# its replies: so what waits for a stuck client is its write buffer and one reply at most.
HEAVY = (p.History, p.Get, p.StatusRequest, p.Thread)
HEAVY_AT_ONCE = 4


def is_heavy(req: p.Request) -> bool:
    # An inbox request that may wait is not: a long poll holding a slot while it waits would stall the others.
    return isinstance(req, HEAVY) or (type(req) is p.Inbox and not req.wait)


FD_MARGIN = 64  # file descriptors beyond the connections: the database, transports, logs
REFUSE_FLUSH_S = 10.0  # a refused client gets this long to read what was sent to it before it is dropped
REFUSAL_LOG_S = 60.0  # refused connections are logged at most this often per uid: a loop of them floods no log


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def raise_fd_limit(max_connections: int) -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit, so that max_connections clients fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, e)
    if soft != resource.RLIM_INFINITY and soft < max_connections + FD_MARGIN:
        log.warning(
            "the open-file limit (%d) is too low for daemon.max_connections = %d: raise `ulimit -n` "
            "(LimitNOFILE= under systemd) or lower daemon.max_connections",
            soft,
            max_connections,
        )


class Server:
    def __init__(
        self, handlers: Handlers, config: DaemonConfig, observer: Hooks = NO_HOOKS, bus: events.EventBus | None = None
    ) -> None:
        self.handlers = handlers
        self.observer = observer  # metrics
        self.bus = bus if bus is not None else events.EventBus()  # watch subscriptions: the bus the observer feeds
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task] = set()
        self.heavy = asyncio.Semaphore(HEAVY_AT_ONCE)
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._refusals: dict[int, tuple[float, int]] = {}  # uid: (when last logged, refused since)
        self.configure(config)
        raise_fd_limit(config.max_connections)

    def configure(self, config: DaemonConfig) -> None:
        """The [daemon] limits and who may connect (at start, and at each reload)."""
        self.max_frame = config.max_frame_bytes
        self.max_connections = config.max_connections
        self.allowed_uids = {os.getuid(), *config.allow_uids}
        self.allowed_gids = set(config.allow_gids)
        self.idle_timeout = config.idle_timeout_s
        self.frame_timeout = config.frame_timeout_s
        self.max_write_buffer = config.max_write_buffer_bytes

    def protocol(self) -> Connection:
        return Connection(self)

    async def call(self, req: p.Request) -> p.Reply:
        """Answer a request that comes by another way than a connection (the dashboard's POST /api/call): the
        same handlers, the same bound on heavy requests, the same errors and metrics as on the socket."""
        started = time.perf_counter()
        try:
            if is_heavy(req):
                async with self.heavy:
                    rep = await self.handlers.handle(req)
            else:
                rep = await self.handlers.handle(req)
        except Exception as e:
            rep = error_reply(req, e)
        rep.rid = req.rid
        self.observer.answered(req, started, rep.code if type(rep) is p.Error else None)
        return rep

    async def drain(self) -> None:
        """Wait for the requests already being handled to reply."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def finish(self, timeout: float) -> None:
        """Give the requests already being handled up to timeout seconds to reply."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.transport.close()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    def watch_idle(self) -> None:
        """Make sure an idle sweep is scheduled while there are connections (no task of its own)."""
        limits = [t for t in (self.idle_timeout, self.frame_timeout) if t > 0]
        if self._sweep_handle is None and limits:
            period = min(max(min(limits) / 4, 0.05), 5.0)
            self._sweep_handle = asyncio.get_running_loop().call_later(period, self._sweep)

    def _sweep(self) -> None:
        self._sweep_handle = None
        limit, frame_limit = self.idle_timeout, self.frame_timeout
        now = asyncio.get_running_loop().time()
        for conn in list(self.connections):
            if frame_limit > 0 and conn.frame_begun is not None and now - conn.frame_begun > frame_limit:
                conn.drop(f"half a frame for over {frame_limit:g} s (daemon.frame_timeout_s)", debug=True)
            elif limit <= 0:
                continue
            elif conn.paused and now - conn.last_active > limit:
                conn.drop(f"its replies unread for over {limit:g} s (daemon.idle_timeout_s)")
            elif not conn.pending and not conn.watches and now - conn.last_active > limit:
                conn.drop(f"idle for over {limit:g} s (daemon.idle_timeout_s)", debug=True)
        if self.connections:
            self.watch_idle()

    def make_room(self, newcomer: Connection) -> bool:
        """At the connection cap: close the connection idle longest, if any is idle. False: none is."""
        idle = [c for c in self.connections if c is not newcomer and c.evictable()]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active)
        self.connections.discard(victim)  # counted out now: connection_lost comes a turn of the loop later
        victim.drop("the longest idle, to make room for a new one (daemon.max_connections)", debug=True)
        return True

    def log_refusal(self, uid: int, gid: int) -> None:
        """Log a refused peer, at most once per REFUSAL_LOG_S per uid, with how many were refused meanwhile."""
        now = time.monotonic()
        logged, since = self._refusals.get(uid, (-REFUSAL_LOG_S, 0))
        if now - logged < REFUSAL_LOG_S:
            self._refusals[uid] = (logged, since + 1)
            return
        more = f" (and {since} more since the last report)" if since else ""
        log.warning("refused a connection from uid %d gid %d%s", uid, gid, more)
        self._refusals[uid] = (now, 0)


class Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport  # set by connection_made, before any other call
        self.closing = False
        self.paused = False  # the client is not reading its replies fast enough
        self.outbox: deque[bytes] = deque()  # replies waiting while paused
        self.writable = asyncio.Event()  # clear while paused
        self.writable.set()
        self.heavy_turn = asyncio.Lock()  # one HEAVY request at a time per connection
        self.reading = True
        self.eof = False  # the client shut down its write side: reply to what is here, then close
        self.pending = 0  # requests being handled
        self.last_active = 0.0
        self.frame_begun: float | None = None  # loop time since which the buffer holds half a frame, while we read
        self.watches: dict[int, events.Subscriber] = {}  # by the watch request's rid

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream socket's
        srv = self.server
        srv.connections.add(self)
        srv.observer.connections(len(srv.connections))
        self.last_active = asyncio.get_running_loop().time()
        self.transport.set_write_buffer_limits(high=srv.max_write_buffer)
        sock = self.transport.get_extra_info("socket")
        _, uid, gid = peer_credentials(sock)
        if uid not in srv.allowed_uids and gid not in srv.allowed_gids:
            srv.log_refusal(uid, gid)
            self.refuse(
                "forbidden",
                f"uid {uid} may not use this coordd: it serves its own uid and those in "
                "daemon.allow_uids / daemon.allow_gids (add it there, or run coordctl as the daemon's user)",
            )
        elif len(srv.connections) > srv.max_connections and not srv.make_room(self):
            self.refuse(
                "unavailable",
                f"coordd already has {srv.max_connections} connections "
                "(daemon.max_connections): close idle clients and retry",
            )
        else:
            srv.watch_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.observer.connections(len(self.server.connections))
        self.closing = True
        for sub in self.watches.values():
            self.server.bus.unsubscribe(sub)
        self.watches.clear()

    def pause_writing(self) -> None:
        self.paused = True
        self.writable.clear()
        self._update_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self.last_active = asyncio.get_running_loop().time()  # the client is reading
        while self.outbox and not self.paused and not self.closing:
            self.transport.write(self.outbox.popleft())  # may pause again
        if not self.paused:
            self.writable.set()
        for sub in list(self.watches.values()):
            sub.resume()
        self._parse()

    def eof_received(self) -> bool:
        self.eof = True
        self._parse()
        return not self.closing  # keep the transport open until the replies are written

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last_active = asyncio.get_running_loop().time()
        self._parse()

    # --- framing and flow control ----------------------------------------------------

    def _may_take(self) -> bool:
        return not self.closing and not self.paused and self.pending < MAX_IN_FLIGHT

    def _parse(self) -> None:
        buf = self.buf
        start = 0
        while self._may_take() and len(buf) - start >= p.HEADER_SIZE:
            size = int.from_bytes(buf[start : start + p.HEADER_SIZE], "big")
            if size > self.server.max_frame:
                self.refuse(
                    "too_large",
                    f"frame of {size} bytes is over the limit of {self.server.max_frame} "
                    "(daemon.max_frame_bytes): send smaller messages or batches",
                )
                return
            end = start + p.HEADER_SIZE + size
            if len(buf) < end:
                break
            self.dispatch(bytes(buf[start + p.HEADER_SIZE : end]))
            start = end
        if start:
            del buf[:start]
        if self.eof and not self.pending and not self.outbox and self._may_take():
            self.closing = True
            self.transport.close()  # every whole frame is answered; what is left is half a frame at most
            return
        self._update_reading()
        # The rest of a frame is the client's to send, within daemon.frame_timeout_s of its first byte or of
        # the last whole frame; the clock stops while we do not read (a frame waiting for a free slot).
        if not buf or not self.reading or self.eof:
            self.frame_begun = None
        elif start or self.frame_begun is None:
            self.frame_begun = asyncio.get_running_loop().time()

    def _update_reading(self) -> None:
        if self.eof or self.closing:
            return
        want = self._may_take()
        if want != self.reading:
            self.reading = want
            (self.transport.resume_reading if want else self.transport.pause_reading)()

    # --- requests and replies --------------------------------------------------------

    def dispatch(self, body: bytes) -> None:
        try:
            req = p.request_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as e:
            # msgspec decodes recursively: past Python's recursion limit it raises RecursionError, at a depth
            # no request has (4 levels at most), so such a frame is one more undecodable request.
            why = "nested too deep (a request nests 4 levels at most)" if isinstance(e, RecursionError) else str(e)
            self.reply(p.Error(rid=_salvage_rid(body), code="bad_request", message=f"cannot decode request: {why}"))
            self.server.observer.rejected("bad_request")
            return
        started = time.perf_counter()
        if isinstance(req, (p.Watch, p.Unwatch)):  # answered at once, so `watching` goes out before any event
            self.reply(rep := events.answer(self.server.bus, self, self.watches, req, self.server.handlers.knows))
            self.server.observer.answered(req, started, getattr(rep, "code", None))
            return
        self.pending += 1
        task = asyncio.get_running_loop().create_task(self.answer(req, started))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def answer(self, req: p.Request, started: float) -> None:
        try:
            rep = await (self._heavy(req) if is_heavy(req) else self.server.handlers.handle(req))
        except Exception as e:
            rep = error_reply(req, e)
        finally:
            self.pending -= 1
        rep.rid = req.rid
        self.reply(rep)
        self.server.observer.answered(req, started, rep.code if type(rep) is p.Error else None)
        if not self.closing:
            self._parse()  # frames may be waiting for a free slot, or an EOF for the last reply

    async def _heavy(self, req: p.Request) -> p.Reply:
        """Handle a request with a potentially large reply: only while this client reads, a few at a time."""
        async with self.heavy_turn:
            while True:
                await self.writable.wait()
                async with self.server.heavy:
                    if self.paused:  # fell behind while queued: let the others go first
                        continue
                    return await self.server.handlers.handle(req)

    def reply(self, rep: p.Reply) -> None:
        if self.closing:
            return
        data = p.frame(rep)
        if self.paused or self.outbox:  # behind: the reply waits its turn (resume_writing sends it)
            self.outbox.append(data)
            return
        self.last_active = asyncio.get_running_loop().time()
        self.transport.write(data)

    def push(self, data: bytes) -> bool:
        """Write a frame the client did not ask for (a watch event) unless it is behind: its write buffer
        is over the high-water mark (then resume_writing drains the watches). False: not written."""
        if self.closing or self.paused:
            return False
        self.transport.write(data)
        return True

    def refuse(self, code: str, message: str) -> None:
        """Send one error and close: for faults after which the stream cannot be trusted or served.

        The replies already due go out first, then the error, so a client that reads gets whole frames
        to the end; one that does not read them within REFUSE_FLUSH_S is dropped."""
        self.server.observer.rejected(code)
        self.closing = True
        self.server.connections.discard(self)  # no slot held while it flushes: it can serve nobody
        self.outbox.append(p.frame(p.Error(code=code, message=message)))
        self.transport.write(b"".join(self.outbox))
        self.outbox.clear()
        self.transport.close()  # flushes what is buffered, then closes
        if self.transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(REFUSE_FLUSH_S, self.transport.abort)

    def evictable(self) -> bool:
        """Idle enough to be closed to make room at the connection cap: no request in flight and no watch
        (half a frame counts as idle), or its client does not read its replies."""
        return not self.closing and (self.paused or (not self.pending and not self.watches))

    def drop(self, why: str, debug: bool = False) -> None:
        """Close at once, discarding unsent replies: for a client that does not read, or has gone quiet."""
        (log.debug if debug else log.warning)("closing a connection: %s", why)
        self.closing = True
        self.transport.abort()


def error_reply(req: p.Request, e: Exception) -> p.Error:
    """The reply to a request whose handling raised e: a refusal's code, or `internal` for a bug in coordd."""
    if isinstance(e, Refused):
        return p.Error(code=e.code, message=e.message, message_id=e.message_id)
    log.error("request %s failed", type(req).__name__, exc_info=e)  # a bug: say so, and keep serving
    return p.Error(
        code="internal",
        message=f"coordd failed handling {type(req).__name__}: {e!r}; it goes on "
        "serving, and its log has the traceback (please report it)",
    )


_rid_only = msgspec.msgpack.Decoder(dict)


def _salvage_rid(body: bytes) -> int:
    """Echo the rid of an undecodable request when it can be read, so a pipelining client can match the error.
    0 when it cannot: not msgpack, not a map, or nested too deep for msgspec to read (RecursionError)."""
    try:
        rid = _rid_only.decode(body).get("rid", 0)
    except Exception:
        return 0
    return rid if type(rid) is int and -(1 << 63) <= rid < 1 << 63 else 0  # an int64, not a bool
