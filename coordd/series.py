"""The last hour, second by second: accepted, delivered and failed messages and delivery latency.

What the dashboard's charts show (GET /api/series). The observer feeds it as
outcomes happen; each event costs O(1): a counter, and for a delivery one
histogram cell. The ring holds SIZE one-second buckets, each reused when its
second comes round again, so memory stays bounded whatever the traffic.

A bucket's latencies are counted in a log-scale histogram (PER_DOUBLING equal
cells per doubling from FLOOR_S up, found with one frexp), a dict of the cells
used, so that a bucket costs a few cells however many messages it saw; the
percentiles are computed when the series is read, as their cell's middle:
within 11% of the true value.
"""

from __future__ import annotations

import math
import time

from coordd.model import Record

SIZE = 3600  # one-second buckets: the last hour
FLOOR_S = 0.0001  # latencies under 0.1 ms share the first cell
PER_DOUBLING = 4  # histogram cells per doubling of latency, of equal width
SCALE = 1 / FLOOR_S
_frexp = math.frexp


def cell(latency: float) -> int:
    """The histogram cell of a latency in seconds: 0 below FLOOR_S, then PER_DOUBLING per doubling."""
    mantissa, exponent = _frexp(latency / FLOOR_S)  # mantissa in [0.5, 1)
    if exponent <= 0:
        return 0
    return (exponent - 1) * PER_DOUBLING + int((mantissa - 0.5) * 2 * PER_DOUBLING) + 1


def cell_middle(index: int) -> float:
    """A cell's middle, in seconds (what a percentile falling in it reads as)."""
    if index == 0:
        return FLOOR_S / 2
    doubling, part = divmod(index - 1, PER_DOUBLING)
    return FLOOR_S * 2**doubling * (1 + (part + 0.5) / PER_DOUBLING)


class Series:
    def __init__(self) -> None:
        self.second = [-1] * SIZE  # the unix second each bucket holds now
        self.accepted = [0] * SIZE
        self.delivered = [0] * SIZE
        self.failed = [0] * SIZE
        self.latency: list[dict[int, int] | None] = [None] * SIZE  # histogram cell: count

    def _bucket(self, at: float) -> int:
        """The index of the bucket of second `at`, emptied first if it held an older second."""
        second = int(at)
        i = second % SIZE
        if self.second[i] != second:
            self.second[i] = second
            self.accepted[i] = self.delivered[i] = self.failed[i] = 0
            self.latency[i] = None
        return i

    # Fed by the observer (coordd.observer.Observer), as the hooks report outcomes.

    def on_accepted(self, count: int, at: float) -> None:
        self.accepted[self._bucket(at)] += count

    def on_delivered(self, recs: list[Record], finished: float) -> None:
        i = self._bucket(finished)
        self.delivered[i] += len(recs)
        hist = self.latency[i]
        if hist is None:
            hist = self.latency[i] = {}
        get, frexp = hist.get, _frexp
        for rec in recs:
            mantissa, exponent = frexp((finished - rec.created) * SCALE)  # cell(), inlined: this is per message
            c = exponent * PER_DOUBLING + int(mantissa * 2 * PER_DOUBLING) - 2 * PER_DOUBLING + 1
            if exponent <= 0 or mantissa <= 0:  # under FLOOR_S, or a clock that stepped back
                c = 0
            hist[c] = get(c, 0) + 1

    def on_failed(self, at: float) -> None:
        self.failed[self._bucket(at)] += 1

    def read(self, now: float | None = None) -> dict:
        """The last SIZE seconds up to `now`, oldest first, as GET /api/series answers (docs/dashboard.md)."""
        end = int(time.time() if now is None else now)
        start = end - SIZE + 1
        accepted: list[int] = []
        delivered: list[int] = []
        failed: list[int] = []
        p50: list[float | None] = []
        p99: list[float | None] = []
        for second in range(start, end + 1):
            i = second % SIZE
            if self.second[i] != second:
                accepted.append(0)
                delivered.append(0)
                failed.append(0)
                p50.append(None)
                p99.append(None)
                continue
            accepted.append(self.accepted[i])
            delivered.append(self.delivered[i])
            failed.append(self.failed[i])
            low, high = percentiles(self.latency[i])
            p50.append(low)
            p99.append(high)
        return {
            "start": start,
            "step": 1,
            "accepted": accepted,
            "delivered": delivered,
            "failed": failed,
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
        }


def percentiles(hist: dict[int, int] | None) -> tuple[float | None, float | None]:
    """p50 and p99 in milliseconds of a bucket's histogram (None, None: no delivery that second)."""
    if not hist:
        return None, None
    total = sum(hist.values())
    found: list[float] = []
    seen = 0
    targets = iter((math.ceil(total * 0.5), math.ceil(total * 0.99)))
    target = next(targets)
    for index in sorted(hist):
        seen += hist[index]
        while seen >= target:
            found.append(round(cell_middle(index) * 1000, 3))
            target = next(targets, 0)
            if not target:
                return found[0], found[1]
    return found[0], found[-1]  # pragma: no cover (seen reaches total, so both targets are met)
