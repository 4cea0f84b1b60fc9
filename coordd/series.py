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
    """The ring: bucket `second % SIZE` holds `second`. Buckets are emptied as the clock passes them (in
    `_advance`, once a second), so a read is a few list slices; a bucket's percentiles are computed once,
    when its second is over, and its histogram then dropped."""

    def __init__(self) -> None:
        self.current = int(time.time())  # the latest second: the buckets hold the SIZE seconds up to it
        self.accepted = [0] * SIZE
        self.delivered = [0] * SIZE
        self.failed = [0] * SIZE
        self.latency: list[dict[int, int] | None] = [None] * SIZE  # histogram cell: count, until summarized
        self.p50: list[float | None] = [None] * SIZE  # ms, once the bucket's second is over
        self.p99: list[float | None] = [None] * SIZE
        self.open: list[int] = []  # buckets with a histogram not summarized yet

    def _advance(self, second: int) -> None:
        """The clock reached `second`: empty the buckets of the seconds passed, which the ring reuses for them.
        A clock that stepped back rewinds, and the seconds it comes to again are emptied again then."""
        if second > self.current:
            for passed in range(max(self.current + 1, second - SIZE + 1), second + 1):
                i = passed % SIZE
                self.accepted[i] = self.delivered[i] = self.failed[i] = 0
                self.latency[i] = self.p50[i] = self.p99[i] = None
        self.current = second

    # Fed by the observer (coordd.observer.Observer), as the hooks report outcomes.

    def on_accepted(self, count: int, at: float) -> None:
        second = int(at)
        if second != self.current:
            self._advance(second)
        self.accepted[second % SIZE] += count

    def on_delivered(self, recs: list[Record], finished: float) -> None:
        second = int(finished)
        if second != self.current:
            self._advance(second)
        i = second % SIZE
        self.delivered[i] += len(recs)
        hist = self.latency[i]
        if hist is None:
            hist = self.latency[i] = {}
            self.open.append(i)
        get, frexp = hist.get, _frexp
        for rec in recs:
            mantissa, exponent = frexp((finished - rec.created) * SCALE)  # cell(), inlined: this is per message
            c = exponent * PER_DOUBLING + int(mantissa * 2 * PER_DOUBLING) - 2 * PER_DOUBLING + 1
            if exponent <= 0 or mantissa <= 0:  # under FLOOR_S, or a clock that stepped back
                c = 0
            hist[c] = get(c, 0) + 1

    def on_failed(self, at: float) -> None:
        second = int(at)
        if second != self.current:
            self._advance(second)
        self.failed[second % SIZE] += 1

    def read(self, now: float | None = None) -> dict:
        """The last SIZE seconds up to `now`, oldest first, as GET /api/series answers (docs/dashboard.md)."""
        self._advance(int(time.time() if now is None else now))
        i = self.current % SIZE
        still_open = []
        for j in self.open:  # summarize the seconds that are over
            if j == i:
                still_open.append(j)
            else:
                self.p50[j], self.p99[j] = percentiles(self.latency[j])
                self.latency[j] = None
        self.open = still_open
        p50, p99 = list(self.p50), list(self.p99)
        p50[i], p99[i] = percentiles(self.latency[i])  # the second going on: so far

        def oldest_first(values: list) -> list:
            return values[i + 1 :] + values[: i + 1]

        return {
            "start": self.current - SIZE + 1,
            "step": 1,
            "accepted": oldest_first(self.accepted),
            "delivered": oldest_first(self.delivered),
            "failed": oldest_first(self.failed),
            "latency_p50_ms": oldest_first(p50),
            "latency_p99_ms": oldest_first(p99),
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
