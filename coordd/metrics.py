"""Prometheus metrics: plain numbers on the hot path, exposition text at scrape time.

The instruments are plain Python counters and bucket arrays: an increment costs
tens of nanoseconds, against ~0.5 us for a labelled prometheus_client child, and
importing prometheus_client costs ~60 ms, so it is imported only when metrics
are first read (a scrape, `coordctl metrics`). What is state rather than a count
(queue depths, oldest ages, in flight, health, connections, the store) is read
when scraped, by `Collector`: nothing on the hot path. A scrape runs on the
event loop, so it reads a consistent state without locks.

Label values come only from the config (agent ids, transport names) and from
fixed enums (request ops, error codes), so the number of series is bounded.
The HTTP endpoint (`[metrics] listen`) is served on the event loop too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, get_args

from coordctl import protocol as p
from coordd import __version__
from coordd.model import Histogram

if TYPE_CHECKING:  # imported at the first scrape only
    from prometheus_client import CollectorRegistry

log = logging.getLogger("coordd.metrics")

# Histogram bounds in seconds, 50 us to 30 s; a 1-2.5-5 progression.
BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
WINDOW_S = 300.0  # status shows delivery latency percentiles over this window
WINDOW_SAMPLES = 4096  # ...of at most this many recent deliveries per agent
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_OPS = {cls: cls.__struct_config__.tag for cls in get_args(p.Request)}


class AgentStats:
    """One agent's counts under one transport (a reload that changes the transport starts a new series)."""

    __slots__ = (
        "accepted",
        "acked",
        "cancelled",
        "delivered",
        "failed",
        "latency",
        "read",
        "retried",
        "transport",
        "window",
    )

    def __init__(self, transport: str, window: deque | None = None) -> None:
        self.transport = transport
        self.accepted = self.delivered = self.failed = self.retried = self.cancelled = 0
        self.read = self.acked = 0  # receipts: by `inbox` (read) and `ack` or `inbox --ack` (acked)
        self.latency = Histogram(BUCKETS)  # accepted to delivered, seconds
        self.window: deque[tuple[float, float]] = window if window is not None else deque(maxlen=WINDOW_SAMPLES)

    def percentiles(self, now: float) -> tuple[float | None, float | None]:
        """p50 and p99 of the delivery latencies of the last WINDOW_S seconds; None without any."""
        since = now - WINDOW_S
        recent = sorted(lat for t, lat in self.window if t >= since)
        if not recent:
            return None, None
        n = len(recent)
        return recent[n // 2], recent[min(n - 1, int(n * 0.99))]


def transport_name(agent: Any) -> str:
    return agent.__struct_config__.tag  # the config's `transport` key


class Metrics:
    def __init__(self) -> None:
        self.agents: dict[str, AgentStats] = {}  # by agent id: the series now counting
        self.series: dict[tuple[str, str], AgentStats] = {}  # by (agent, transport), kept across reloads
        self.rpc: dict[type, Histogram] = {cls: Histogram(BUCKETS) for cls in REQUEST_OPS}
        self.rejected: dict[str, int] = dict.fromkeys(p.ERROR_CODES, 0)
        self.connections = 0  # open client connections

    def configure(self, config: Any) -> None:
        """Series for every configured agent (at start and at each reload), so all show from the first scrape."""
        for a in config.agents:
            self.agent(a.id, transport_name(a))

    def agent(self, agent_id: str, transport: str | None = None) -> AgentStats:
        """The stats now counting for an agent; an agent never configured in this run counts as transport "none"."""
        stats = self.agents.get(agent_id)
        if stats is not None and (transport is None or stats.transport == transport):
            return stats
        key = (agent_id, transport or "none")
        fresh = self.series.get(key) or AgentStats(key[1], stats.window if stats is not None else None)
        self.series[key] = self.agents[agent_id] = fresh
        return fresh

    def reject(self, code: str) -> None:
        if code in self.rejected:
            self.rejected[code] += 1


class Collector:
    """Turns the counts, and the daemon's state as it is now, into metric families and their exposition.

    delivery, store and bus are the daemon's (coorddelivery.Delivery, coordstore.Store,
    coordd.events.EventBus), read only at scrape time; without them, the counts alone.
    """

    def __init__(self, metrics: Metrics, delivery: Any = None, store: Any = None, bus: Any = None) -> None:
        self.metrics = metrics
        self.delivery = delivery
        self.store = store
        self.bus = bus
        self._registry: CollectorRegistry | None = None

    def exposition(self) -> bytes:
        """The Prometheus text format (0.0.4) of every metric."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry())

    def text(self) -> str:
        return self.exposition().decode()

    def registry(self) -> CollectorRegistry:
        """The private CollectorRegistry, made on first use (the only place prometheus_client is imported)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry, ProcessCollector

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self)
            ProcessCollector(registry=self._registry)
        return self._registry

    def describe(self) -> list:
        return []  # nothing to check at registration: names are fixed here

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.metrics
        info = GaugeMetricFamily("coordd_build_info", "The running coordd's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        labels = ["agent", "transport"]
        for what, doc in (
            ("accepted", "Messages accepted (committed) for delivery"),
            ("delivered", "Messages delivered"),
            ("failed", "Messages that failed every attempt (final until retried)"),
            ("retried", "Messages put back for another attempt: after a failed attempt, or by `retry`"),
            ("cancelled", "Messages cancelled while queued"),
            ("read", "Messages read by their recipient (fetched through inbox, or acknowledged unread)"),
            ("acked", "Messages acknowledged by their recipient"),
        ):
            fam = CounterMetricFamily(f"coordd_messages_{what}", doc, labels=labels)
            for (agent, transport), st in m.series.items():
                fam.add_metric([agent, transport], getattr(st, what))
            yield fam
        yield _histograms(
            "coordd_delivery_latency_seconds",
            "Time from accepted to delivered",
            labels,
            (([a, t], st.latency) for (a, t), st in m.series.items()),
        )
        yield _histograms(
            "coordd_rpc_duration_seconds",
            "Time to answer a request, by its op",
            ["method"],
            (([REQUEST_OPS[cls]], h) for cls, h in m.rpc.items()),
        )
        rejected = CounterMetricFamily(
            "coordd_requests_rejected", "Requests answered with an error, by code", labels=["code"]
        )
        for code, n in m.rejected.items():
            rejected.add_metric([code], n)
        yield rejected
        if self.delivery is not None:
            yield from self._state()

    def _state(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        delivery, store, bus, now = self.delivery, self.store, self.bus, time.time()
        depth, held, oldest, flight, healthy = (
            GaugeMetricFamily(name, doc, labels=["agent", "transport"])
            for name, doc in (
                ("coordd_queue_depth", "Messages waiting to be delivered (not counting in flight)"),
                (
                    "coordd_queue_bytes",
                    "Bytes the bodies of undelivered messages hold, in flight too (queue.max_bytes bounds the sum)",
                ),
                ("coordd_queue_oldest_age_seconds", "How long the oldest undelivered message has waited (0: none)"),
                ("coordd_deliveries_in_flight", "Messages being delivered now"),
                ("coordd_transport_healthy", "1 while the agent's transport works, 0 while it is down"),
            )
        )
        for q in delivery.queues.values():
            key = [q.id, q.transport_name()]
            created = q.oldest_created()
            depth.add_metric(key, len(q))
            held.add_metric(key, q.held)
            oldest.add_metric(key, max(0.0, now - created) if created is not None else 0.0)
            flight.add_metric(key, len(q.in_flight))
            healthy.add_metric(key, 0 if q.down else 1)
        yield from (depth, held, oldest, flight, healthy)
        for name, doc, value in (
            (
                "coordd_orphaned_messages",
                "Messages queued for agents no longer configured",
                sum(delivery.orphaned().values()),
            ),
            ("coordd_connections", "Open client connections", self.metrics.connections),
            ("coordd_watchers", "Active watch subscriptions", len(bus.subscribers)),
            ("coordd_store_rows", "Messages stored", store.rows),
            ("coordd_store_size_bytes", "Database size on disk, with its WAL", store.size_bytes()),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        yield _histograms("coordd_store_commit_batch_size", "Writes per group commit", [], [([], store.commit_sizes)])
        for name, doc, value in (
            ("coordd_store_pruned", "Messages removed by retention", store.pruned),
            ("coordd_store_commits", "Group commits", store.commits),
            ("coordd_watch_events_missed", "Events dropped for watchers that fell behind", bus.missed),
        ):
            yield CounterMetricFamily(name, doc, value=value)


def _histograms(name: str, doc: str, labels: list[str], items):
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in items:
        cumulative, buckets = 0, []
        for bound, n in zip((*h.bounds, float("inf")), h.counts, strict=True):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        fam.add_metric(values, buckets, sum_value=h.sum)
    return fam


# --- the HTTP endpoint ---------------------------------------------------------------------

MAX_HEAD = 8192  # bytes of request line and headers
HTTP_TIMEOUT_S = 10.0  # for a scraper to send its request


async def serve_http(collector: Collector, host: str, port: int) -> asyncio.Server:
    """Serve GET /metrics on host:port, on the event loop (a scrape reads the daemon's state in place)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HTTP_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
                path = target.split(b"?", 1)[0]
                if method not in (b"GET", b"HEAD"):
                    status, body, ctype = "405 Method Not Allowed", b"use GET\n", "text/plain"
                elif path not in (b"/metrics", b"/"):
                    status, body, ctype = "404 Not Found", b"metrics are at /metrics\n", "text/plain"
                else:
                    status, body, ctype = "200 OK", collector.exposition(), CONTENT_TYPE
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + (b"" if method == b"HEAD" else body)
                )
                await writer.drain()
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a bad or vanished scraper: nothing to answer
        except Exception:
            log.exception("serving a metrics scrape failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_HEAD, reuse_address=True)
