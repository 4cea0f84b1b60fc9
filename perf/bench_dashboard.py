#!/usr/bin/env python3
"""What an open dashboard costs the senders (issue 17, point 5): a Markdown table on stdout, JSON in
perf/results/bench_dashboard.json.

Daemons alike (8 inbox agents, as perf/bench.py, metrics and watch events as by default) but for the
dashboard:
- without: no [http] at all (no aiohttp, no series kept);
- without, again: the same, measured as a variant: how far it lands from the first is the noise;
- served, closed: [http] listen set (the series kept), nobody looking;
- open: [http] listen set, and what an open page does: a client reading every event of /api/events
  (decoding each, as the page does) and another polling /api/series once a second.
Each is measured for sequential sends (one Client, p50/p99) and for aggregate throughput (8 client
processes), in rounds that take the variants in turn (each round starting one later), so that they share
the machine's noise; the figures are medians over the rounds, each cost the median of the per-round
ratios to that round's `without`. The daemon's CPU per message is shown too: it hardly depends on what
else the machine does. The target: `open` within 5% of `without`. Nothing asserts on time.
Usage: python perf/bench_dashboard.py [--quick] [--rounds N] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import bench  # noqa: E402  (perf/bench.py: its helpers and its way of running a daemon)
import bench_observability as obs  # noqa: E402  (its CPU pinning and accounting)
import rounds  # noqa: E402  (perf/rounds.py: the variants in rotating rounds, their paired costs)

VARIANTS = ("without", "without, again", "served, closed", "open")
BASELINE, JUDGED, TARGET = "without", "open", 0.05
HTTP = '[http]\nlisten = "127.0.0.1:0"\n'

# What the page's live feed does: read every event and decode it.
FEED = r"""
import http.client, json, sys
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection(host, port)
conn.request("GET", "/api/events", headers={"X-Coordd-Token": token})
r = conn.getresponse()
assert r.status == 200, r.status
print("streaming", flush=True)
for line in r:
    if line.startswith(b"data: "):
        json.loads(line[6:])
"""

# What the page's charts do: fetch the last hour once a second.
CHARTS = r"""
import http.client, json, sys, time
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection(host, port)
while True:
    conn.request("GET", "/api/series", headers={"X-Coordd-Token": token})
    r = conn.getresponse()
    assert r.status == 200, r.status
    json.loads(r.read())
    print("polled", flush=True)
    time.sleep(1)  # noqa: sleep-ok: the page's polling interval
"""


@contextlib.contextmanager
def daemon(variant: str):
    """A coordd for one variant, with the page's clients running; they are stopped by pid."""
    from coordctl import Client

    helpers: list[subprocess.Popen] = []
    try:
        with bench.daemon(extra_config="" if variant.startswith("without") else HTTP) as d:
            with Client(d.socket) as c:
                url = c.status().http_url
            if variant == "open":
                assert url, "the dashboard does not listen"
                host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
                token = Path(d.socket + ".http-token").read_text().strip()
                for code in (FEED, CHARTS):
                    helper = subprocess.Popen(
                        [sys.executable, "-c", code, host, port, token], cwd=d.tmp, stdout=subprocess.PIPE
                    )
                    helpers.append(helper)
                    helper.stdout.readline()  # streaming, or polled once: a steady state from here
                with Client(d.socket) as c:
                    bench.wait_until(lambda: c.status().watchers == 1, 20, "the feed to subscribe", d.proc)
            yield SimpleNamespace(socket=d.socket, tmp=d.tmp, proc=d.proc, feed=helpers[0] if helpers else None)
            for h in helpers:  # before the daemon stops, so that none of them complains
                bench.stop(h)
    finally:
        for h in helpers:
            bench.stop(h)


def measure(variant: str, cfg) -> dict:
    """One variant on a fresh daemon: sequential sends, then 8 sending processes; the CPU each used."""
    from coordctl import Client

    with daemon(variant) as d:
        obs.pin_daemon(d.proc.pid)
        with Client(d.socket) as c, obs.pinned_here():
            bench.timed_sends(c, cfg.warmup)
            cpu0 = obs.cpu_ns(d.proc.pid), d.feed and obs.cpu_ns(d.feed.pid)
            seq = bench.stats_us(bench.timed_sends(c, cfg.sends))
        rate = bench.concurrent("send", d.socket, cfg.per_client, d.tmp)[0]
        sent = cfg.sends + 8 * cfg.per_client
        daemon_cpu = (obs.cpu_ns(d.proc.pid) - cpu0[0]) / sent / 1000
        feed_cpu = (obs.cpu_ns(d.feed.pid) - cpu0[1]) / sent / 1000 if d.feed else None
    return {"seq": seq, "rate": rate, "daemon_cpu_us": daemon_cpu, "feed_cpu_us": feed_cpu}


def hook_cost(n: int) -> dict[str, float]:
    """The daemon's own added work per message, in process and without I/O (far less dependent on the
    machine's load than the timings above): the hooks a send and its delivery call (answered, accepted, delivering,
    delivered), with metrics only, plus the series, plus an open feed (the bus hands each event to the
    stream, which encodes it as the SSE handler does)."""
    import asyncio
    import time

    from coordctl import protocol
    from coordd.dashboard_server import Stream, encode_events
    from coordd.events import EventBus
    from coordd.metrics import Metrics
    from coordd.model import Record
    from coordd.observer import Observer
    from coordd.series import Series

    async def per_message(series: bool, feed: bool) -> float:
        observer = Observer(Metrics(), EventBus(), Series() if series else None)
        stream = Stream(frozenset(), 1 << 30, lambda: None)
        if feed:
            observer.bus.attach(stream)
        req = protocol.Send(to="Agent-1", body="bench message")
        t0 = bench.pc()
        for i in range(n):
            recs = [Record(id=i, agent="Agent-1", body="bench message", priority="regular", created=time.time())]
            observer.answered(req, time.perf_counter(), None)
            observer.accepted(recs)
            observer.delivering("Agent-1", recs)
            observer.delivered("Agent-1", recs, time.time())
            if feed and len(observer.bus.pending) >= 256:
                observer.bus.flush()
                encode_events(stream.waiting)
                stream.waiting = []
        return (bench.pc() - t0) / n / 1000

    async def each() -> dict[str, float]:
        # Interleaved repeats, the least of each: other work on the machine only ever adds time.
        variants = {
            "metrics": (False, False),
            "metrics + series": (True, False),
            "metrics + series + feed": (True, True),
        }
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(5):
            for name, (series, feed) in variants.items():
                best[name] = min(best[name], await per_message(series, feed))
        return best

    return asyncio.run(each())


def run(cfg) -> list[dict[str, dict]]:
    return rounds.rotating(VARIANTS, cfg.rounds, lambda v: measure(v, cfg))


def summarize(results: list[dict[str, dict]]) -> list[dict]:
    """Medians over the rounds; each cost the median of the per-round ratios to that round's baseline."""
    med = statistics.median
    rows = []
    for v in VARIANTS:
        runs = [r[v] for r in results]
        p50_cost, rate_cost, cpu_cost = rounds.costs(results, v, BASELINE)
        feed = [x["feed_cpu_us"] for x in runs if x["feed_cpu_us"] is not None]
        judged = v == JUDGED
        rows.append(
            {
                "variant": v,
                "send_p50_us": med(x["seq"]["p50"] for x in runs),
                "send_p99_us": med(x["seq"]["p99"] for x in runs),
                "rate_msgs_s": med(x["rate"] for x in runs),
                "daemon_cpu_us_per_msg": med(x["daemon_cpu_us"] for x in runs),
                "feed_cpu_us_per_msg": med(feed) if feed else None,
                "p50_cost": p50_cost,
                "throughput_cost": rate_cost,
                "daemon_cpu_cost": cpu_cost,
                "target": f"<= {TARGET:.0%}" if judged else "-",
                "ok": (p50_cost <= TARGET and rate_cost <= TARGET) if judged else None,
            }
        )
    return rows


def table(rows: list[dict], cfg, machine: dict) -> str:
    out = [
        f"coordd dashboard bench{' --quick' if cfg.quick else ''}: {machine['nproc']} CPUs ({machine['cpu']}), "
        f"Python {machine['python']}, {machine['date']}, load average {machine['load']:.2f} at the start. "
        f"{cfg.rounds} rounds; sequential: {cfg.sends} sends on one Client (daemon and client pinned to different "
        f"CPUs); throughput: 8 processes x {cfg.per_client} sends. Figures are medians over the rounds; each "
        '"vs without" is the median of the per-round ratios.',
        "",
        "| variant | send p50 | vs without | send p99 | 8-process throughput | vs without | daemon CPU per message "
        "| vs without | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = {True: ": pass", False: ": **FAIL**", None: ""}[r["ok"]]
        note = (
            f" (the feed client: {r['feed_cpu_us_per_msg']:.1f} us CPU per message)" if r["feed_cpu_us_per_msg"] else ""
        )
        out.append(
            f"| {r['variant']}{note} | {r['send_p50_us']:.1f} us | {r['p50_cost']:+.1%} | "
            f"{r['send_p99_us']:.1f} us | {r['rate_msgs_s']:,.0f} msgs/s | {-r['throughput_cost']:+.1%} | "
            f"{r['daemon_cpu_us_per_msg']:.1f} us | {r['daemon_cpu_cost']:+.1%} | {r['target']}{verdict} |"
        )
    return "\n".join(out)


def main() -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run, as a smoke check")
    ap.add_argument("--rounds", type=int, help="rounds of every variant (default 8, --quick 1)")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_dashboard.json"))
    args = ap.parse_args()
    q = args.quick
    cfg = argparse.Namespace(
        quick=q,
        rounds=args.rounds or (1 if q else 8),
        warmup=200 if q else 300,
        sends=500 if q else 3000,
        per_client=200 if q else 1500,
    )
    machine = {**bench.machine(), "load": os.getloadavg()[0]}
    rows = summarize(run(cfg))
    hooks = hook_cost(5_000 if q else 40_000)
    base_cpu = next(r["daemon_cpu_us_per_msg"] for r in rows if r["variant"] == BASELINE)
    print(table(rows, cfg, machine), flush=True)
    added = hooks["metrics + series + feed"] - hooks["metrics"]
    print(
        "\nThe hooks alone, in process, no I/O, per message (answered, accepted, delivering, delivered): "
        + ", ".join(f"{k} {v:.2f} us" for k, v in hooks.items())
        + f". What the open dashboard adds, {added:.2f} us, is {added / base_cpu:.1%} of the daemon's "
        f"{base_cpu:.0f} us CPU per message without it."
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"machine": machine, "config": vars(cfg), "rows": rows, "hooks_us": hooks}, indent=1) + "\n"
    )
    print(f"\nJSON: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
