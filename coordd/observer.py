"""What happens to messages and requests, reported once, to the metrics and to watchers.

delivery.py, handlers.py and server.py call the hooks (coordd.hooks) where
outcomes happen. The `Observer` implements them: it counts into `Metrics` and,
while anyone watches, publishes events on the `EventBus`; with nobody watching,
no event is built at all. `start_http` serves the metrics when configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from operator import attrgetter
from typing import NamedTuple

from coordctl import protocol as p
from coordd.config import Config, split_listen
from coordd.events import EventBus
from coordd.hooks import Hooks, Receipted
from coordd.metrics import Collector, Metrics, serve_http
from coordd.model import Record, preview
from coordd.series import Series

_AGENT = attrgetter("agent")

log = logging.getLogger("coordd.observer")


class Observer(Hooks):
    def __init__(self, metrics: Metrics, bus: EventBus, series: Series | None = None) -> None:
        self.metrics = metrics
        self.bus = bus
        self.series = series  # the dashboard's last hour, kept only while it is served ([http] listen)

    def configure(self, config: Config) -> None:
        self.metrics.configure(config)  # ([metrics] listen is read once, at start: see start_http)
        self.bus.configure(config.metrics.watch_buffer)

    def percentiles(self, agent: str, now: float) -> tuple[float | None, float | None]:
        stats = self.metrics.agents.get(agent)
        return stats.percentiles(now) if stats is not None else (None, None)

    def watchers(self) -> int:
        return len(self.bus.subscribers)

    # Events are built only while someone watches (bus.active); publishing one is a list append.

    def accepted(self, recs: list[Record]) -> None:
        stats = self.metrics.agent
        for agent, n in Counter(map(_AGENT, recs)).items():  # (counted in C: a batch holds thousands)
            stats(agent).accepted += n
        if self.series is not None and recs:
            self.series.on_accepted(len(recs), recs[0].created)
        if self.bus.active:
            for rec in recs:
                self.bus.publish(_event("accepted", rec, rec.created, preview=preview(rec.body)))

    def delivering(self, agent: str, recs: list[Record]) -> None:
        if self.bus.active:
            now = time.time()
            for rec in recs:
                attempt = rec.attempts + 1
                if rec.announced != attempt:  # not announced yet: untried ones come back in the next batch
                    rec.announced = attempt
                    self.bus.publish(_event("delivering", rec, now, attempt=attempt))

    def held(self, agent: str, recs: list[Record], reason: str) -> None:
        if self.bus.active:
            now = time.time()
            for rec in recs:
                self.bus.publish(_event("held", rec, now, attempt=rec.attempts, reason=reason))

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
        if self.series is not None:
            self.series.on_delivered(recs, finished)

    def retried(self, agent: str, rec: Record, error: str | None, retry_in: float | None) -> None:
        self.metrics.agent(agent).retried += 1
        if self.bus.active:
            self.bus.publish(_event("retried", rec, time.time(), attempt=rec.attempts, error=error, retry_in=retry_in))

    def failed(self, agent: str, rec: Record, error: str) -> None:
        self.metrics.agent(agent).failed += 1
        if self.series is not None:
            self.series.on_failed(time.time())
        if self.bus.active:
            self.bus.publish(_event("failed", rec, time.time(), attempt=rec.attempts, error=error))

    def cancelled(self, rec: Record) -> None:
        self.metrics.agent(rec.agent).cancelled += 1
        if self.bus.active:
            self.bus.publish(_event("cancelled", rec, time.time(), attempt=rec.attempts))

    def read(self, agent: str, msgs: list[Receipted], at: float) -> None:
        self.metrics.agent(agent).read += len(msgs)
        if self.bus.active:
            self._receipts("read", agent, msgs, at)

    def acked(self, agent: str, msgs: list[Receipted], at: float) -> None:
        self.metrics.agent(agent).acked += len(msgs)
        if self.bus.active:
            self._receipts("acked", agent, msgs, at)

    def _receipts(self, kind: p.EventType, agent: str, msgs: list[Receipted], at: float) -> None:
        for message_id, sender, priority in msgs:
            self.bus.publish(p.Event(event=kind, id=message_id, agent=agent, time=at, sender=sender, priority=priority))

    def answered(self, req: p.Request, started: float, code: str | None) -> None:
        self.metrics.rpc[type(req)].observe(time.perf_counter() - started)
        if code is not None:
            self.metrics.reject(code)

    def rejected(self, code: str) -> None:
        self.metrics.reject(code)

    def connections(self, count: int) -> None:
        self.metrics.connections = count


def _event(
    kind: p.EventType,
    rec: Record,
    at: float,
    attempt: int = 0,
    error: str | None = None,
    retry_in: float | None = None,
    latency: float | None = None,
    preview: str | None = None,
    reason: str | None = None,
) -> p.Event:
    # Named parameters, not **fields: merging a dict of keywords tripled the cost of building an event.
    return p.Event(
        event=kind,
        id=rec.id,
        agent=rec.agent,
        time=at,
        sender=rec.sender,
        priority=rec.priority,  # type: ignore[arg-type]
        attempt=attempt,
        error=error,
        retry_in=retry_in,
        latency=latency,
        preview=preview,
        group=rec.group,
        reason=reason,
    )


# --- the HTTP endpoint --------------------------------------------------------------------------

# For perf/bench_observability.py only: the daemon runs without hooks at all, as the baseline.
BENCH_OFF = "COORDD_BENCH_NO_OBSERVER"


class Endpoint(NamedTuple):  # not a dataclass: importing dataclasses is 4 M instructions of the daemon's start
    """The Prometheus endpoint as `status` shows it: where it listens, or why it does not though configured."""

    url: str | None = None
    error: str | None = None
    server: asyncio.Server | None = None


async def start_http(collector: Collector, config: Config) -> Endpoint:
    """The Prometheus endpoint, if [metrics] listen is set. A failure to listen is logged and shown in status,
    and the daemon goes on: messages matter more than metrics."""
    listen = config.metrics.listen
    if not listen:
        return Endpoint()
    host, port = split_listen(listen)
    try:
        server = await serve_http(collector, host, port)
    except OSError as e:
        error = f"cannot listen on {listen}: {e.strerror or e}"
        log.error("metrics: %s; serving without the HTTP endpoint (`coordctl metrics` still works)", error)
        return Endpoint(error=error)
    collector.registry()  # prometheus_client's import (~30 ms) now, not at the first scrape mid-service
    port = server.sockets[0].getsockname()[1]  # port 0: the one the kernel chose
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    log.info("metrics at %s", url)
    return Endpoint(url=url, server=server)
