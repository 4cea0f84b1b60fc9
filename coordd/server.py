"""The Unix-socket server: framing, the frame-size cap, peer credentials, pipelining.

One Connection per client, an asyncio.Protocol: bytes are parsed into frames as
they arrive, each request runs as its own task (so a slow one, such as a send
with wait, never holds up the others on the connection) and its reply carries
the request's rid. The frame-size cap is checked on the 4-byte prefix before
any body byte is buffered. A client that stops reading its replies is paused
(we stop reading its requests) instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import msgspec

from coordctl import protocol as p
from coordd.handlers import Handlers, Refused

log = logging.getLogger("coordd.server")

WRITE_HIGH_WATER = 1 << 20  # per connection: past this, stop reading its requests until it drains


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


class Server:
    def __init__(self, handlers: Handlers, max_frame: int, max_connections: int, allowed_uids: set[int],
                 allowed_gids: set[int]) -> None:  # fmt: skip
        self.handlers = handlers
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.allowed_uids = allowed_uids
        self.allowed_gids = allowed_gids
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task] = set()

    def protocol(self) -> Connection:
        return Connection(self)

    async def drain(self) -> None:
        """Wait for the requests already being handled to reply."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.transport.close()


class Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.paused = False

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        srv = self.server
        srv.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        _, uid, gid = peer_credentials(sock)
        if uid not in srv.allowed_uids and gid not in srv.allowed_gids:
            log.warning("refused a connection from uid %d gid %d", uid, gid)
            self.refuse("forbidden", f"uid {uid} may not use this coordd (it serves its own uid and the allow-lists)")
        elif len(srv.connections) > srv.max_connections:
            self.refuse("unavailable", f"coordd already has {srv.max_connections} connections "
                        "(daemon.max_connections): close idle clients and retry")  # fmt: skip

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True

    def pause_writing(self) -> None:
        self.paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if not self.closing:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        start = 0
        while not self.closing and len(buf) - start >= p.HEADER_SIZE:
            size = int.from_bytes(buf[start : start + p.HEADER_SIZE], "big")
            if size > self.server.max_frame:
                self.refuse("too_large", f"frame of {size} bytes is over the limit of {self.server.max_frame} "
                            "(daemon.max_frame_bytes): send smaller messages or batches")  # fmt: skip
                return
            end = start + p.HEADER_SIZE + size
            if len(buf) < end:
                break
            self.dispatch(bytes(buf[start + p.HEADER_SIZE : end]))
            start = end
        if start:
            del buf[:start]

    # --- requests and replies --------------------------------------------------------

    def dispatch(self, body: bytes) -> None:
        try:
            req = p.request_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            self.reply(p.Error(rid=_salvage_rid(body), code="bad_request", message=f"cannot decode request: {e}"))
            return
        task = asyncio.get_running_loop().create_task(self.answer(req))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def answer(self, req: p.Request) -> None:
        try:
            rep = await self.server.handlers.handle(req)
        except Refused as e:
            rep = p.Error(code=e.code, message=e.message, message_id=e.message_id)
        except Exception as e:
            log.exception("request %s failed", type(req).__name__)
            rep = p.Error(code="bad_request", message=f"internal error handling {type(req).__name__}: {e!r}")
        rep.rid = req.rid
        self.reply(rep)

    def reply(self, rep: p.Reply) -> None:
        if not self.closing:
            self.transport.write(p.frame(rep))

    def refuse(self, code: str, message: str) -> None:
        """Send one error and close: for faults after which the stream cannot be trusted or served."""
        self.reply(p.Error(code=code, message=message))
        self.closing = True
        self.transport.close()  # flushes the buffered error first


_rid_only = msgspec.msgpack.Decoder(dict)


def _salvage_rid(body: bytes) -> int:
    """Echo the rid of an undecodable request when it can be read, so a pipelining client can match the error."""
    try:
        rid = _rid_only.decode(body).get("rid", 0)
    except Exception:
        return 0
    return rid if isinstance(rid, int) else 0
