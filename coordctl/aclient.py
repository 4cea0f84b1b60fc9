"""The asyncio client: one connection, many requests in flight.

Requests are written as they come; a background task reads replies and hands
each to the future waiting on its ``rid``, so concurrent calls share the
connection without waiting for each other. Same methods as ``Client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING

import msgspec

from coordctl import protocol
from coordctl.client import check_directory, check_peer, reply_too_large, unreachable
from coordctl.errors import CoordError, DaemonUnavailable, error_for, raise_for
from coordctl.operations import AsyncOperations, expect

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    # What a watch's queue holds: its events and misses; an error the daemon sent for it, or the
    # exception that broke the connection; None once the client closed.
    StreamItem = protocol.Event | protocol.Reply | CoordError | None


class AsyncClient(AsyncOperations):
    """An asyncio connection to coordd; connects on first use and again on
    the next call after the connection breaks.

    ``timeout`` (seconds) bounds each wait for a reply; ``None``: no limit.
    A call that times out or is cancelled leaves the connection usable: its
    reply, if it ever comes, is dropped. ``allow_uids`` and ``max_reply_bytes``:
    as for ``Client`` (the same checks, once per connection).
    """

    def _init_connection(self) -> None:
        self._pending: dict[int, asyncio.Future[protocol.Reply]] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        # watch rid -> its events; None or an exception ends it
        self._streams: dict[int, asyncio.Queue[StreamItem]] = {}

    # --- connection ------------------------------------------------------------

    async def connect(self) -> None:
        """Connect now rather than on the first call (idempotent)."""
        async with self._connect_lock:  # concurrent first calls share one connection
            if self._writer is not None:
                return
            check_directory(self.socket_path, self._trusted)
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
            except OSError as e:
                raise unreachable(self.socket_path, e) from e
            try:
                check_peer(writer.get_extra_info("socket"), self.socket_path, self._trusted)
            except CoordError:
                writer.close()
                raise
            self._reader, self._writer = reader, writer
            self._read_task = asyncio.create_task(self._read_replies(reader), name="coordctl-replies")

    async def close(self) -> None:
        writer, task = self._writer, self._read_task
        self._reader = self._writer = self._read_task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):  # already broken: closing is all we wanted
                await writer.wait_closed()
        self._fail_pending(lambda: DaemonUnavailable("client closed"), closed=True)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        make_error: Callable[[], CoordError]
        try:
            while True:
                header = await reader.readexactly(protocol.HEADER_SIZE)
                size = int.from_bytes(header, "big")
                if size > self.max_reply_bytes:
                    make_error = functools.partial(reply_too_large, size, self.max_reply_bytes, self.socket_path)
                    break
                body = await reader.readexactly(size)
                reply = protocol.reply_decoder.decode(body)
                stream = self._streams.get(reply.rid)
                if stream is not None:  # events of a watch
                    if type(reply) is protocol.Events:
                        for ev in reply.events:
                            stream.put_nowait(ev)
                    else:
                        stream.put_nowait(reply)
                    continue
                if type(reply) is protocol.Watching:  # its events may follow at once: route them from now on
                    self._streams[reply.rid] = asyncio.Queue()
                future = self._pending.pop(reply.rid, None)
                if future is not None:
                    if not future.done():
                        future.set_result(reply)
                elif type(reply) is protocol.Error and reply.rid == 0:
                    # A connection-level error (too_large, forbidden, ...): the
                    # daemon closes now, so every request in flight has failed.
                    make_error = functools.partial(error_for, reply)
                    break
                # else: a late reply to a call that timed out or was cancelled.
        except (asyncio.IncompleteReadError, OSError):
            make_error = functools.partial(
                DaemonUnavailable, "connection closed by coordd (is it stopping or restarting?)"
            )
        except msgspec.DecodeError as e:
            make_error = functools.partial(CoordError, "protocol_error", f"undecodable reply from coordd: {e}")
        if self._reader is reader:  # not already replaced by close() or a reconnect
            assert self._writer is not None
            self._writer.close()
            self._reader = self._writer = self._read_task = None
        self._fail_pending(make_error)

    def _fail_pending(self, make_error: Callable[[], CoordError], *, closed: bool = False) -> None:
        # One exception object per waiter: tracebacks are attached per raise.
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(make_error())
        streams, self._streams = self._streams, {}
        for stream in streams.values():  # a watch ends quietly when we close, with the error when the daemon did
            stream.put_nowait(None if closed else make_error())

    # --- the generic request/reply --------------------------------------------

    async def call(self, req: protocol.Request) -> protocol.Reply:
        """Send one request and await its reply; an Error reply is raised as CoordError.

        Assigns ``req.rid``.
        """
        return await self._call(req, self.timeout)

    async def _call(self, req: protocol.Request, timeout: float | None) -> protocol.Reply:
        reply = (await self._exchange([req], timeout))[0]
        if type(reply) is protocol.Error:
            raise_for(reply)
        return reply

    async def pipeline(self, requests: Iterable[protocol.Request]) -> list[protocol.Reply]:
        """Send many requests at once; returns the replies in request order,
        Error replies returned rather than raised."""
        return await self._exchange(list(requests), self.timeout)

    async def _exchange(self, reqs: list[protocol.Request], timeout: float | None) -> list[protocol.Reply]:
        if not reqs:
            return []
        idle = self._writer is not None and not self._pending and not self._streams
        rids, futures, writer = await self._write(reqs)
        if idle and writer.transport.is_closing():
            # The write failed at once: the daemon had closed this idle connection (daemon.idle_timeout_s, a
            # restart) and the reply task has not seen it yet. None of these frames reached the daemon, so none
            # was acted on: they go again, once, on a new connection (as Client does).
            for rid in rids:
                self._pending.pop(rid, None)
            await self.close()
            rids, futures, writer = await self._write(reqs)
        try:
            # If the connection is gone, so is the transport: the reply task
            # then fails our futures, with the daemon's reason if it sent one
            # before closing (too_large, forbidden, unavailable).
            with contextlib.suppress(OSError):
                await writer.drain()
            async with asyncio.timeout(timeout):
                if len(futures) == 1:
                    return [await futures[0]]
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            raise DaemonUnavailable(f"no reply from coordd at {self.socket_path} within {timeout:g} s") from None
        finally:
            for rid in rids:
                self._pending.pop(rid, None)

    async def _write(
        self, reqs: list[protocol.Request]
    ) -> tuple[list[int], list[asyncio.Future[protocol.Reply]], asyncio.StreamWriter]:
        """Write reqs (connecting first if need be), each with a new rid and a future for its reply."""
        if self._writer is None:
            await self.connect()
        writer = self._writer
        assert writer is not None
        loop = asyncio.get_running_loop()
        rids, futures = [], []
        for req in reqs:
            self._rid += 1
            req.rid = self._rid
            rids.append(self._rid)
            futures.append(self._pending.setdefault(self._rid, loop.create_future()))
            writer.write(protocol.frame(req))
        return rids, futures, writer

    # --- the operations (each defined once, in operations.Operations) -----------

    async def watch(self, *, agents: Iterable[str] = (), events: Iterable[protocol.EventType] = ()) -> Subscription:
        """Subscribe to events; returns once subscribed. Unlike Client.watch, the connection stays
        usable for other calls meanwhile. ``async for event in sub``; ``await sub.aclose()`` (or
        ``async with sub``) ends the watch. Consume promptly: events the daemon sent are held
        here until read."""
        req = protocol.Watch(agents=list(agents), events=list(events), protocol=protocol.PROTOCOL_VERSION)
        expect(await self.call(req), protocol.Watching)
        stream = self._streams.get(req.rid)
        if stream is None:  # the connection broke right after the reply
            raise DaemonUnavailable("connection closed by coordd (is it stopping or restarting?)")
        return Subscription(self, req.rid, stream)

    async def _unwatch(self, rid: int) -> None:
        if self._streams.pop(rid, None) is not None:
            expect(await self.call(protocol.Unwatch(watch=rid)), protocol.Unwatched)


class Subscription:
    """A watch on an AsyncClient: an async iterator of ``Event`` and ``Missed``."""

    def __init__(self, client: AsyncClient, rid: int, stream: asyncio.Queue[StreamItem]) -> None:
        self.client = client
        self.rid = rid
        self._stream = stream
        self._done = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> protocol.Event | protocol.Missed:
        if self._done:
            raise StopAsyncIteration
        item = await self._stream.get()
        if item is None or isinstance(item, BaseException):
            self._done = True
            if item is None:
                raise StopAsyncIteration
            raise item
        if isinstance(item, (protocol.Event, protocol.Missed)):
            return item
        if type(item) is protocol.Error:
            raise_for(item)
        raise CoordError("protocol_error", f"a {type(item).__name__} reply where the watch's events were due")

    async def aclose(self) -> None:
        """End the watch; the client's connection stays open for other calls."""
        if not self._done:
            self._done = True
            await self.client._unwatch(self.rid)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
