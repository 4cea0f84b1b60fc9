"""The dashboard's HTTP server ([http] listen): the page, its JSON API, its live event stream, /metrics.

docs/dashboard.md is the contract. aiohttp serves it, in the daemon's own event
loop (so a request reads the daemon's state in place, as a socket request does),
and is imported only when [http] listen is set: the daemon imports this module
then, and only then.

Any local user can reach a loopback TCP port, unlike the 0600 Unix socket, so
every request needs the daemon's token: random per start, in a 0600 file beside
the socket, which only the daemon's user can read (`coordctl dashboard` prints
the URL with it). The `Host` header must name the listen address (no DNS
rebinding), and a POST needs the token in its X-Coordd-Token header, never a
cookie alone (no cross-site request forgery).

POST /api/call answers through Server.call, the same handlers, bounds, errors
and metrics as the Unix socket. GET /api/events streams the event bus that
`watch` reads, as Server-Sent Events: a client that falls behind (stops reading)
by more than [metrics] watch_buffer events is dropped (its browser reconnects),
so it never holds up the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import logging
import mimetypes
import os
import re
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources

import msgspec
from aiohttp import web

from coordctl import protocol as p
from coordd.config import Config, split_listen
from coordd.events import EventBus
from coordd.metrics import CONTENT_TYPE, Collector
from coordd.series import Series
from coordd.server import Server

log = logging.getLogger("coordd.dashboard")

TOKEN_SUFFIX = ".http-token"  # the token file is the socket's path plus this
COOKIE = "coordd_token"
TOKEN_HEADER = "X-Coordd-Token"
TOKEN_META = "{{COORDD_TOKEN}}"  # index.html's placeholder, replaced by the token when the page is served
# Events go out at most this long after they happen, together: a write per FEED_DELAY_S at most, however
# busy the daemon is, so the feed costs it (and the browser) little per message; a person sees no delay.
FEED_DELAY_S = 0.1
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and the browser from timing the stream out
MAX_STREAMS = 32  # event streams at once: each holds up to [metrics] watch_buffer events
STATIC = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")  # no dot files, no ".."
NO_STORE = {"Cache-Control": "no-store"}
HTTP_CODES = {404: "not_found", 413: "too_large"}  # the error codes of aiohttp's own refusals; others: bad_request
# The page's own files only: no inline script, no other origin, never framed; the URL's token goes nowhere.
SECURITY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

_decode_request = msgspec.json.Decoder(p.Request).decode
_encode = msgspec.json.Encoder().encode


def token_path(socket_path: str) -> str:
    return socket_path + TOKEN_SUFFIX


@dataclass
class Listening:
    """The dashboard's socket, bound at start (before anything serves), or why it could not be."""

    url: str | None = None  # http://host:port/, without the token
    error: str | None = None
    sock: socket.socket | None = None
    hosts: frozenset[str] = field(default_factory=frozenset)  # the Host headers accepted


def bind(config: Config) -> Listening:
    """Bind [http] listen. A failure is logged and shown in status; the daemon serves messages without it."""
    listen = config.http.listen
    named, port = split_listen(listen)
    host = "127.0.0.1" if named == "localhost" else named
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
    except OSError as e:
        error = f"cannot listen on {listen}: {e.strerror or e}"
        log.error("dashboard: %s; serving without it", error)
        return Listening(error=error)
    port = sock.getsockname()[1]  # port 0: the one the kernel chose
    shown = f"[{named}]" if ":" in named else named
    hosts = {f"{shown}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}
    return Listening(url=f"http://{shown}:{port}/", sock=sock, hosts=frozenset(h.lower() for h in hosts))


def write_token(path: str) -> str:
    """A new random token in a new 0600 file at path (whatever was there replaced, never through a link)."""
    token = secrets.token_urlsafe(32)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a link is removed, never followed
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    return token


def _unauthorized() -> web.Response:
    return _error(
        401,
        "unauthorized",
        "this needs the daemon's token: open the URL `coordctl dashboard` prints (the token is in the file "
        f"beside the daemon's socket, *{TOKEN_SUFFIX}), or send it as the {TOKEN_HEADER} header or "
        "`Authorization: Bearer TOKEN`",
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=_encode({"error": {"code": code, "message": message}}),
        content_type="application/json",
        headers=NO_STORE,
    )


def encode_events(events: list[p.Event]) -> bytes:
    """Events as Server-Sent Events: a `data:` line of JSON each."""
    return b"".join([b"data: " + _encode(ev) + b"\n\n" for ev in events])


class Stream:
    """One GET /api/events client, as the event bus sees it (an events.Sink), and the loop that writes to it.

    Events wait in `waiting` until the loop writes them. While a write waits for the client to read (its
    connection's buffers are full: it is behind), more than `limit` waiting events drop the client; a burst
    that arrives while it keeps up (a large batch's events, in one turn of the event loop) does not."""

    def __init__(self, agents: frozenset[str], limit: int, drop: Callable[[], None]) -> None:
        self.agents = agents or None  # None: every agent
        self.limit = limit
        self.drop = drop  # closes the connection: the client fell behind
        self.waiting: list[p.Event] = []
        self.ready = asyncio.Event()
        self.behind = False  # a write waits for the client to read
        self.dropped = False
        self.loop = asyncio.get_running_loop()
        self._wake: asyncio.TimerHandle | None = None

    def take(self, batch: list[p.Event]) -> None:
        if self.dropped:
            return
        if self.agents is not None:
            agents = self.agents
            batch = [ev for ev in batch if ev.agent in agents]
            if not batch:
                return
        self.waiting += batch
        if self.behind and len(self.waiting) > self.limit:
            self.dropped = True  # its browser reconnects and starts afresh
            self.waiting = []
            log.warning("dropping a dashboard event stream: its client fell behind by over %d events", self.limit)
            self.drop()
            self.ready.set()
        elif self._wake is None:  # what comes meanwhile goes out with these, in one write
            self._wake = self.loop.call_later(FEED_DELAY_S, self._write_soon)

    def _write_soon(self) -> None:
        self._wake = None
        self.ready.set()

    def end(self) -> None:
        """The daemon stops: the stream ends."""
        self.dropped = True
        self.ready.set()
        if self._wake is not None:
            self._wake.cancel()

    async def pump(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        """Write the events as they come, a comment when none come for KEEPALIVE_S, until dropped or ended."""
        await self._write(write, b"retry: 1000\n\n")  # sends the headers now; a dropped client is back in 1 s
        while not self.dropped:
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    await self.ready.wait()
            except TimeoutError:
                await self._write(write, b": keepalive\n\n")
                continue
            self.ready.clear()
            events, self.waiting = self.waiting, []
            if events and not self.dropped:
                await self._write(write, encode_events(events))

    async def _write(self, write: Callable[[bytes], Awaitable[None]], data: bytes) -> None:
        self.behind = True  # take() runs meanwhile only if the write waits: the client is behind
        try:
            await write(data)
        finally:
            self.behind = False


class Dashboard:
    def __init__(
        self,
        listening: Listening,
        server: Server,
        bus: EventBus,
        series: Series,
        collector: Collector,
        config: Config,
        socket_path: str,
    ) -> None:
        self.listening = listening
        self.server = server
        self.bus = bus
        self.series = series
        self.collector = collector
        self.config = config  # as at start: [http] changes wait for a restart, like [metrics] listen
        self.token_path = token_path(socket_path)
        self.token = b""
        self.streams: set[Stream] = set()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Write the token and serve, if the socket is bound."""
        if self.listening.sock is None:
            return
        self.token = write_token(self.token_path).encode()
        app = web.Application(middlewares=[self._guard], client_max_size=self.config.daemon.max_frame_bytes)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name:.+}", self._static)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/api/call", self._call)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/series", self._series)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.config.daemon.shutdown_grace_ms / 1000)
        await self.runner.setup()
        await web.SockSite(self.runner, self.listening.sock).start()
        self.collector.registry()  # prometheus_client's import (~30 ms) now, not at the first scrape
        log.info("dashboard at %s (`coordctl dashboard` prints its URL with the token)", self.listening.url)

    async def stop(self) -> None:
        """End the event streams, finish the requests in progress (within daemon.shutdown_grace_ms), remove the
        token file."""
        for stream in list(self.streams):
            stream.end()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        elif self.listening.sock is not None:
            self.listening.sock.close()
        if self.token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.token_path)

    # --- access control -------------------------------------------------------------------------

    def _valid(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode("utf-8", "replace"), self.token)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        host = request.headers.get("Host", "").lower()
        if host not in self.listening.hosts:
            return _error(
                403,
                "bad_host",
                f"the Host header {host!r} is not this dashboard's address: open {self.listening.url} "
                "(or localhost / 127.0.0.1 on its port)",
            )
        header = request.headers.get(TOKEN_HEADER)
        if request.method not in ("GET", "HEAD"):
            if not self._valid(header):
                return _error(
                    401, "unauthorized", f"a {request.method} needs the daemon's token in the {TOKEN_HEADER} header"
                )
        elif request.path == "/" and "token" in request.query:
            if not self._valid(request.query["token"]):
                return _unauthorized()
            response = web.Response(status=303, headers={"Location": "/", **NO_STORE, **SECURITY})
            response.set_cookie(COOKIE, request.query["token"], httponly=True, samesite="Strict", path="/")
            return response
        else:
            bearer = request.headers.get("Authorization", "")
            given = [header, request.cookies.get(COOKIE), bearer[7:] if bearer.startswith("Bearer ") else None]
            if not any(self._valid(t) for t in given):
                return _unauthorized()
        try:
            answer = await handler(request)
        except web.HTTPException as e:  # no such path or method: JSON, like every other error here
            if e.status < 400:
                raise
            code = HTTP_CODES.get(e.status, "bad_request")
            return _error(e.status, code, f"{e.reason}: {request.method} {request.path} (docs/dashboard.md)")
        if not answer.prepared:  # an event stream sent its headers, these among them, already
            answer.headers.update(SECURITY)
        return answer

    # --- the page ---------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        page = resources.files("coordd").joinpath("dashboard", "index.html").read_text("utf-8")
        page = page.replace(TOKEN_META, html.escape(self.token.decode()))
        return web.Response(text=page, content_type="text/html", headers=NO_STORE)

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        file = resources.files("coordd").joinpath("dashboard", *name.split("/"))
        if not STATIC.fullmatch(name) or name == "index.html" or not file.is_file():
            return _error(404, "not_found", f"no static file {name!r}")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return web.Response(body=file.read_bytes(), content_type=ctype, headers={"Cache-Control": "no-cache"})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.collector.exposition(), headers={"Content-Type": CONTENT_TYPE, **NO_STORE})

    # --- the API ----------------------------------------------------------------------------

    async def _call(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            req = _decode_request(body)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as e:
            why = "nested too deep" if isinstance(e, RecursionError) else str(e)
            self.server.observer.rejected("bad_request")
            return _error(400, "bad_request", f"cannot decode request: {why} (docs/dashboard.md, POST /api/call)")
        if isinstance(req, (p.Watch, p.Unwatch)):
            rep: p.Reply = p.Error(
                rid=req.rid,
                code="bad_request",
                message=f"{type(req).__name__.lower()} needs a connection: use GET /api/events for the live events",
            )
        else:
            rep = await self.server.call(req)
        return web.Response(body=_encode(rep), content_type="application/json", headers=NO_STORE)

    async def _series(self, request: web.Request) -> web.Response:
        return web.Response(body=_encode(self.series.read()), content_type="application/json", headers=NO_STORE)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        agents = frozenset(request.query.getall("agent", []))
        if unknown := sorted(a for a in agents if not self.server.handlers.knows(a)):
            return _error(400, "unknown_agent", f"agent: no agent named {unknown[0]!r}")
        if len(self.streams) >= MAX_STREAMS:
            return _error(503, "unavailable", f"at most {MAX_STREAMS} event streams at once: close a dashboard tab")
        transport = request.transport
        stream = Stream(agents, self.bus.buffer, transport.abort if transport is not None else lambda: None)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no", **NO_STORE, **SECURITY}
        )
        await response.prepare(request)
        self.streams.add(stream)
        self.bus.attach(stream)
        try:
            await stream.pump(response.write)
        except ConnectionError:
            pass  # the client went away, or fell behind (Stream.drop)
        finally:
            stream.end()
            self.bus.unsubscribe(stream)
            self.streams.discard(stream)
        return response
