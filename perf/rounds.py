"""Variants measured side by side in rotating rounds, and their costs against a baseline paired by round.

For perf/bench_observability.py and perf/bench_dashboard.py, which compare daemons that differ in one
setting: each round measures every variant, starting one variant later than the round before (none always
goes first), and a variant's cost is the median over the rounds of its ratio to the same round's baseline,
so that a round's variants share its moment's noise as other work on the machine comes and goes.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence


def rotating(variants: Sequence[str], rounds: int, measure: Callable[[str], dict]) -> list[dict[str, dict]]:
    """`rounds` rounds of measure(variant) for every variant; each round starts one variant later."""
    out = []
    for r in range(rounds):
        order = [*variants[r % len(variants) :], *variants[: r % len(variants)]]
        got = {}
        for v in order:
            print(f"bench: round {r + 1}/{rounds}: {v} ...", file=sys.stderr, flush=True)
            got[v] = measure(v)
        out.append(got)
    return out


def costs(rounds: list[dict[str, dict]], variant: str, baseline: str) -> tuple[float, float, float]:
    """The variant's costs against the baseline, each the median over the rounds of the paired ratio: send p50
    (more is worse), throughput (less is worse) and the daemon's CPU a message (more is worse)."""
    med = statistics.median
    return (
        med(r[variant]["seq"]["p50"] / r[baseline]["seq"]["p50"] - 1 for r in rounds),
        med(1 - r[variant]["rate"] / r[baseline]["rate"] for r in rounds),
        med(r[variant]["daemon_cpu_us"] / r[baseline]["daemon_cpu_us"] - 1 for r in rounds),
    )
