"""What happens to messages and requests, reported once, to the metrics and to watchers.

delivery.py, handlers.py and server.py call these hooks where outcomes happen.
`Hooks` does nothing: those classes start with it, so they work on their own.
The daemon installs an `Observer` (`install`), which counts into `Metrics` and,
while anyone watches, publishes events on the `EventBus`; with nobody watching,
no event is built at all. `start_http` serves the metrics when configured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from types import SimpleNamespace

from coordctl import protocol as p
from coordd.config import Config, split_listen
from coordd.events import EventBus
from coordd.metrics import Collector, Metrics, serve_http
from coordd.store import Record

log = logging.getLogger("coordd.observer")

PREVIEW = 80  # characters of a body's first line in an `accepted` event
_LEADING_SPACE = re.compile(r"\s*")


class Hooks:
    """The hooks, doing nothing."""

    def accepted(self, recs: list[Record]) -> None:
        """Committed, and about to join their queues."""

    def delivering(self, agent: str, recs: list[Record]) -> None:
        """An attempt starts for each of recs."""

    def delivered(self, agent: str, recs: list[Record], finished: float) -> None:
        """recs were delivered; their `attempts` count the attempt that did it."""

    def retried(self, agent: str, rec: Record, error: str | None, retry_in: float | None) -> None:
        """rec goes back to its queue: its attempt failed (error), or a `retry` request (error None)."""

    def failed(self, agent: str, rec: Record, error: str) -> None:
        """rec's last allowed attempt failed."""

    def cancelled(self, rec: Record) -> None:
        """rec was cancelled while queued."""

    def answered(self, req: p.Request, started: float, code: str | None) -> None:
        """A request was answered; started is its time.perf_counter() on arrival; code: the error's, if refused."""

    def rejected(self, code: str) -> None:
        """An error that no decoded request's answer reports (an undecodable frame, a refused connection)."""

    # --- configuration, and what `status` and `metrics` read ---------------------------------

    metrics_url: str | None = None  # where the HTTP endpoint listens
    metrics_error: str | None = None  # why it does not, though configured

    def configure(self, config: Config) -> None:
        """Serve `config` from now on (at start, and at each reload)."""

    def percentiles(self, agent: str, now: float) -> tuple[float | None, float | None]:
        """An agent's p50 and p99 delivery latency over the last 5 minutes."""
        return None, None

    def watchers(self) -> int:
        return 0

    def exposition(self) -> str:
        return ""


NO_HOOKS = Hooks()


class Observer(Hooks):
    def __init__(self, metrics: Metrics, bus: EventBus) -> None:
        self.metrics = metrics
        self.bus = bus

    def configure(self, config: Config) -> None:
        self.metrics.configure(config)  # ([metrics] listen is read once, at start: see start_http)
        self.bus.buffer = config.metrics.watch_buffer

    def percentiles(self, agent: str, now: float) -> tuple[float | None, float | None]:
        stats = self.metrics.agents.get(agent)
        return stats.percentiles(now) if stats is not None else (None, None)

    def watchers(self) -> int:
        return len(self.bus.subscribers)

    def exposition(self) -> str:
        return self.metrics.exposition().decode()

    # Events are built only while someone watches (bus.active); publishing one is a list append.

    def accepted(self, recs: list[Record]) -> None:
        stats = self.metrics.agent
        for rec in recs:
            stats(rec.agent).accepted += 1
        if self.bus.active:
            for rec in recs:
                self.bus.publish(_event("accepted", rec, rec.created, preview=preview(rec.body)))

    def delivering(self, agent: str, recs: list[Record]) -> None:
        if self.bus.active:
            now = time.time()
            for rec in recs:
                self.bus.publish(_event("delivering", rec, now, attempt=rec.attempts + 1))

    def delivered(self, agent: str, recs: list[Record], finished: float) -> None:
        stats = self.metrics.agent(agent)
        stats.delivered += len(recs)
        observe, window, active = stats.latency.observe, stats.window.append, self.bus.active
        for rec in recs:
            latency = max(0.0, finished - rec.created)
            observe(latency)
            window((finished, latency))
            if active:
                self.bus.publish(_event("delivered", rec, finished, attempt=rec.attempts, latency=latency))

    def retried(self, agent: str, rec: Record, error: str | None, retry_in: float | None) -> None:
        self.metrics.agent(agent).retried += 1
        if self.bus.active:
            self.bus.publish(_event("retried", rec, time.time(), attempt=rec.attempts, error=error, retry_in=retry_in))

    def failed(self, agent: str, rec: Record, error: str) -> None:
        self.metrics.agent(agent).failed += 1
        if self.bus.active:
            self.bus.publish(_event("failed", rec, time.time(), attempt=rec.attempts, error=error))

    def cancelled(self, rec: Record) -> None:
        self.metrics.agent(rec.agent).cancelled += 1
        if self.bus.active:
            self.bus.publish(_event("cancelled", rec, time.time(), attempt=rec.attempts))

    def answered(self, req: p.Request, started: float, code: str | None) -> None:
        self.metrics.rpc[type(req)].observe(time.perf_counter() - started)
        if code is not None:
            self.metrics.reject(code)

    def rejected(self, code: str) -> None:
        self.metrics.reject(code)


def _event(kind: p.EventType, rec: Record, at: float, attempt: int = 0, error: str | None = None,
           retry_in: float | None = None, latency: float | None = None, preview: str | None = None) -> p.Event:
    # Named parameters, not **fields: merging a dict of keywords tripled the cost of building an event.
    return p.Event(event=kind, id=rec.id, agent=rec.agent, time=at, sender=rec.sender, priority=rec.priority,  # type: ignore[arg-type]
                   attempt=attempt, error=error, retry_in=retry_in, latency=latency, preview=preview)  # fmt: skip


def preview(body: str) -> str:
    """The body's first line, from its first non-space character, at most PREVIEW characters; without
    copying the rest of a long body."""
    start = _LEADING_SPACE.match(body).end() if body[:1].isspace() else 0  # type: ignore[union-attr]
    end = body.find("\n", start, start + PREVIEW)
    return body[start : end if end >= 0 else start + PREVIEW]


# --- wiring ----------------------------------------------------------------------------------

# For perf/bench_observability.py only: the daemon runs without any of this, as the baseline.
BENCH_OFF = "COORDD_BENCH_NO_OBSERVER"


def install(config: Config, store, delivery, handlers, server) -> Observer:
    """Make the daemon's Observer and hook it into delivery, handlers and server."""
    metrics, bus = Metrics(), EventBus(config.metrics.watch_buffer)
    observer = Observer(metrics, bus)
    observer.configure(config)
    metrics.collector = Collector(metrics, SimpleNamespace(delivery=delivery, server=server, store=store, bus=bus))
    if os.environ.get(BENCH_OFF):
        log.warning("%s is set: no metrics, no watch events (a benchmark baseline)", BENCH_OFF)
        return observer
    delivery.observer = handlers.observer = server.observer = observer
    server.bus = bus
    return observer


async def start_http(observer: Observer, config: Config) -> asyncio.Server | None:
    """The Prometheus endpoint, if [metrics] listen is set. A failure to listen is logged and shown in status,
    and the daemon goes on: messages matter more than metrics."""
    listen = config.metrics.listen
    if not listen:
        return None
    host, port = split_listen(listen)
    try:
        server = await serve_http(observer.metrics, host, port)
    except OSError as e:
        observer.metrics_error = f"cannot listen on {listen}: {e.strerror or e}"
        log.error("metrics: %s; serving without the HTTP endpoint (`coordctl metrics` still works)",
                  observer.metrics_error)  # fmt: skip
        return None
    observer.metrics.registry()  # prometheus_client's import (~30 ms) now, not at the first scrape mid-service
    port = server.sockets[0].getsockname()[1]  # port 0: the one the kernel chose
    observer.metrics_url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    log.info("metrics at %s", observer.metrics_url)
    return server
