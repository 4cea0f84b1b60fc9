"""Where outcomes are reported: the hooks delivery, the handlers and the server call as things happen.

`Hooks` does nothing, and NO_HOOKS is one: objects built with it work on their
own (tests, the benchmark baseline). The daemon builds its objects with an
Observer (coordd.observer), which counts into the metrics and publishes watch
events.
"""

from __future__ import annotations

from coordctl import protocol as p
from coordd.config import Config
from coordd.model import Record

# A receipted message, as a read/acked event shows it: (id, sender, priority).
Receipted = tuple[int, str | None, p.Priority]


class Hooks:
    """The hooks, doing nothing."""

    def accepted(self, recs: list[Record]) -> None:
        """Committed, and about to join their queues."""

    def delivering(self, agent: str, recs: list[Record]) -> None:
        """An attempt starts for each of recs (the transport may stop before the later ones: those not tried are
        handed over again, so an attempt is announced only once, its number recorded in rec.announced)."""

    def held(self, agent: str, recs: list[Record], reason: str) -> None:
        """recs wait in agent's queue for `reason` (its transport is down), once when the wait starts."""

    def delivered(self, agent: str, recs: list[Record], finished: float) -> None:
        """recs were delivered; their `attempts` count the attempt that did it."""

    def retried(self, agent: str, rec: Record, error: str | None, retry_in: float | None) -> None:
        """rec goes back to its queue: its attempt failed (error), or a `retry` request (error None)."""

    def failed(self, agent: str, rec: Record, error: str) -> None:
        """rec's last allowed attempt failed."""

    def cancelled(self, rec: Record) -> None:
        """rec was cancelled while queued."""

    def read(self, agent: str, msgs: list[Receipted], at: float) -> None:
        """agent read msgs (fetched them through `inbox`, or acknowledged them unread); stored at `at`."""

    def acked(self, agent: str, msgs: list[Receipted], at: float) -> None:
        """agent acknowledged msgs; stored at `at`."""

    def answered(self, req: p.Request, started: float, code: str | None) -> None:
        """A request was answered; started is its time.perf_counter() on arrival; code: the error's, if refused."""

    def rejected(self, code: str) -> None:
        """An error that no decoded request's answer reports (an undecodable frame, a refused connection)."""

    def connections(self, count: int) -> None:
        """A connection opened or closed: count are open now."""

    # --- configuration, and what `status` reads -------------------------------------------------

    def configure(self, config: Config) -> None:
        """Serve `config` from now on (at start, and at each reload)."""

    def percentiles(self, agent: str, now: float) -> tuple[float | None, float | None]:
        """An agent's p50 and p99 delivery latency over the last 5 minutes."""
        return None, None

    def watchers(self) -> int:
        return 0


NO_HOOKS = Hooks()
