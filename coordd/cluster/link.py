"""The connection to NATS: connect (and reconnect) forever, know whether it is up and since when, set up the stream.

nats-py reconnects by itself once connected; the first connection it does not retry, so `run` does, with a
backoff. The stream holds two subjects per node: `coordd.node.NODE.in` (messages for its agents) and
`coordd.node.NODE.receipts` (the outcomes of the messages it forwarded); its duplicate window drops a message
published twice with the same Nats-Msg-Id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

import nats
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from coordd.config import Cluster

log = logging.getLogger("coordd.cluster")

SUBJECTS = ("coordd.node.*.in", "coordd.node.*.receipts")
FIRST_RETRY_S, MAX_RETRY_S = 0.25, 5.0


def inbox_subject(node: str) -> str:
    return f"coordd.node.{node}.in"


def receipts_subject(node: str) -> str:
    return f"coordd.node.{node}.receipts"


class Link:
    def __init__(self, config: Cluster) -> None:
        self.config = config
        self.nc: nats.NATS | None = None
        self.js: JetStreamContext | None = None
        self.connected = False
        self.since: float | None = None  # when it connected, or since when it has not been
        self.error: str | None = None
        self.up = asyncio.Event()  # set while connected (and the stream is in place)
        self.lost = asyncio.Event()  # set while not
        self.lost.set()
        self.reconnects: list = []  # callbacks run at each (re)connection

    def down_reason(self) -> str | None:
        """None while connected, else why not (a transport's health)."""
        if self.connected:
            return None
        since = time.strftime("%H:%M:%S", time.localtime(self.since)) if self.since else "start"
        return f"NATS unreachable since {since}" + (f": {self.error}" if self.error else "")

    def server(self) -> str | None:
        if self.nc is None or not self.connected or self.nc.connected_url is None:
            return None
        return self.nc.connected_url.netloc

    async def run(self) -> None:
        """Connect, retrying with a backoff until it works; nats-py keeps it connected from then on."""
        self.since = time.time()
        delay = FIRST_RETRY_S
        while True:
            try:
                self.nc = await nats.connect(**self._options())
                break
            except Exception as e:  # no server yet, refused credentials: say why, and try again
                self.error = str(e) or type(e).__name__
                log.warning("cannot connect to NATS (%s): retrying in %g s", self.error, delay)
            await asyncio.sleep(delay)  # noqa: sleep-ok: a backoff between connection attempts, not a sync
            delay = min(delay * 2, MAX_RETRY_S)
        self.js = self.nc.jetstream()
        while True:
            try:
                await self._ensure_stream()
                break
            except Exception as e:  # e.g. a cluster electing its leader: JetStream not there yet
                self.error = f"stream {self.config.stream}: {e}"
                log.warning("%s: retrying in %g s", self.error, delay)
            await asyncio.sleep(delay)  # noqa: sleep-ok: a backoff while JetStream comes up, not a sync
            delay = min(delay * 2, MAX_RETRY_S)
        self._connected()
        log.info("connected to NATS at %s as node %s", self.server(), self.config.node)

    def _options(self) -> dict:
        cfg = self.config
        opts: dict = {
            "servers": [cfg.nats] if isinstance(cfg.nats, str) else list(cfg.nats),
            "name": f"coordd-{cfg.node}",
            # Replies and pull deliveries come to this node's own inboxes: NATS permissions can then let each
            # node subscribe to its own alone (docs/cluster.md, credentials per node).
            "inbox_prefix": f"_INBOX_{cfg.node}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # forever: a node outlives any outage of NATS
            "reconnect_time_wait": 0.25,
            "connect_timeout": 2,
            # No buffering while reconnecting: a publish then fails at once (and is published again once the link
            # is back, in order) rather than going out later, after messages published since.
            "pending_size": 0,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "error_cb": self._on_error,
        }
        if cfg.creds:
            opts["user_credentials"] = cfg.creds
        if cfg.user:
            opts["user"], opts["password"] = cfg.user, cfg.password
        if cfg.tls_ca or cfg.tls_cert:
            tls = ssl.create_default_context(cafile=cfg.tls_ca or None)
            if cfg.tls_cert:
                tls.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            opts["tls"] = tls
        return opts

    async def _ensure_stream(self) -> None:
        assert self.js is not None
        stream = StreamConfig(
            name=self.config.stream,
            subjects=list(SUBJECTS),
            storage=StorageType.FILE,
            # A work queue: a message is removed once its node acks it, so the stream holds only what is in flight
            # (each node's consumers filter its own subjects, which never overlap).
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=self.config.dedupe_window_s,
            num_replicas=self.config.replicas,
        )
        try:
            await self.js.add_stream(stream)
        except BadRequestError:  # there already, made by another node (or another version): bring it up to date
            await self.js.update_stream(stream)

    def _connected(self) -> None:
        self.connected, self.since, self.error = True, time.time(), None
        self.up.set()
        self.lost.clear()
        for callback in self.reconnects:
            callback()

    async def _on_disconnected(self) -> None:
        if self.connected:
            self.connected, self.since = False, time.time()
            self.up.clear()
            self.lost.set()
            log.warning("lost the connection to NATS; forwarding waits, reconnecting")

    async def _on_reconnected(self) -> None:
        self._connected()
        log.info("reconnected to NATS at %s", self.server())

    async def _on_error(self, e: Exception) -> None:
        self.error = str(e) or type(e).__name__
        log.debug("NATS: %s", self.error)

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            # Not drain(): it waits (up to 30 s) for subscriptions to empty. Acks and receipts not flushed here are
            # sent again after the restart (the unacked come again, found stored; owed receipts are replayed).
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=1)
            with contextlib.suppress(Exception):
                await self.nc.close()
