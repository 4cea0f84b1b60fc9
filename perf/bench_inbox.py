#!/usr/bin/env python3
"""A pull agent's inbox: fetch + ack round trips. A Markdown table on stdout, JSON in perf/results/bench_inbox.json.

One coordd (perf/bench.py's daemon: 8 inbox agents, plus one pull agent, "Puller"), its messages
queued first with batches, then fetched by one coordctl Client:
- one at a time: `inbox(limit=1)` then `ack([id])`, timed together (p50 per message);
- in batches of 100 with `ack=True` (one request per 100 messages; messages/s);
- in batches of 100, each then acknowledged with a separate `ack` of its 100 ids (messages/s).

Each sits next to a durable floor measured in the same run: a uvloop + msgspec echo server that commits
each request to SQLite (WAL, synchronous=NORMAL, coordd's schema) before it answers: one transaction
marking as many stored rows delivered as the request stands for (1 or 100), the least a server that
fetches durably does per request. One fetch+ack is two such round trips, a batch with ack=True one, a batch
and its ack two. The floor is driven with raw frames, coordd with the Client (as perf/bench.py's send
row). Nothing asserts on time. Usage: python perf/bench_inbox.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This checkout's code, installed or not, for us and for the daemon and the floor we start.
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))

import bench  # noqa: E402  (perf/bench.py: its helpers and way of running a daemon)
import floors  # noqa: E402  (perf/floors.py: the durable echo, in its "deliver" mode)

PULLER = "Puller"
PULL_AGENT = f'[[agents]]\nid = "{PULLER}"\ntransport = "pull"\n'


def floor_frame(rows: int) -> bytes:
    import msgspec

    body = msgspec.msgpack.encode({"op": "inbox", "rid": 1, "agent": PULLER, "limit": rows, "rows": rows})
    return len(body).to_bytes(4, "big") + body


def durable_floor(cfg) -> dict[str, dict]:
    """Round trips to the durable echo: requests of 1 row and of 100 rows (ns each, then stats)."""
    stored = cfg.warmup + 2 * cfg.single + 200 * cfg.batches  # every row the requests below mark delivered
    with bench.echo_server(floors.durable_echo("deliver", stored)) as srv:
        one, hundred = floor_frame(1), floor_frame(100)
        bench.round_trips(srv.conn, one, cfg.warmup)
        singles = bench.round_trips(srv.conn, one, 2 * cfg.single)
        batches = bench.round_trips(srv.conn, hundred, 2 * cfg.batches)
    pairs = [a + b for a, b in zip(singles[::2], singles[1::2], strict=True)]  # two round trips: fetch, then ack
    return {
        "pair": bench.stats_us(pairs),
        "batch": bench.stats_us(batches),
        "batch_pair": bench.stats_us([a + b for a, b in zip(batches[::2], batches[1::2], strict=True)]),
    }


def queue(c, n: int) -> None:
    for i in range(0, n, 1000):
        c.batch([{"to": PULLER, "body": f"bench message {j}"} for j in range(i, min(n, i + 1000))])


def one_at_a_time(c, n: int) -> tuple[list[int], list[int], list[int]]:
    """(fetch+ack, fetch, ack) ns per message, fetching one and acking it."""
    both, fetch, ack = [0] * n, [0] * n, [0] * n
    for i in range(n):
        t0 = bench.pc()
        [m] = c.inbox(PULLER, limit=1)
        t1 = bench.pc()
        c.ack(PULLER, [m.id])
        t2 = bench.pc()
        both[i], fetch[i], ack[i] = t2 - t0, t1 - t0, t2 - t1
    return both, fetch, ack


def in_batches(c, n: int, separate_ack: bool) -> tuple[list[int], float]:
    """Fetch (and acknowledge) n queued messages, 100 a request: (ns per 100, as the floor is timed; seconds
    for all n)."""
    got, each = 0, []
    start = bench.pc()
    while got < n:
        t0 = bench.pc()
        page = c.inbox(PULLER, limit=100, ack=not separate_ack)
        if separate_ack:
            c.ack(PULLER, [m.id for m in page])
        each.append(bench.pc() - t0)
        got += len(page)
    return each, (bench.pc() - start) / 1e9


def run(cfg) -> list[dict]:
    from coordctl import Client

    floor = durable_floor(cfg)
    with bench.daemon(extra_config=PULL_AGENT) as d, Client(d.socket) as c:
        queue(c, cfg.warmup + cfg.single)
        one_at_a_time(c, cfg.warmup)
        both, fetch, ack = (bench.stats_us(x) for x in one_at_a_time(c, cfg.single))
        rates, overall = {}, {}
        for separate in (False, True):
            queue(c, cfg.backlog)
            each, secs = in_batches(c, cfg.backlog, separate)
            rates[separate], overall[separate] = 100 / (bench.stats_us(each)["p50"] / 1e6), cfg.backlog / secs
    pair = floor["pair"]["p50"]
    return [
        bench.row(
            "pull agent: inbox(limit=1) + ack, per message (p50)",
            both["p50"],
            "us",
            "durable echo, 2 round trips of 1 row (p50)",
            pair,
            both["p50"] / pair,
            note=f"{cfg.single} messages; fetch p50 {fetch['p50']:.0f} us, ack p50 {ack['p50']:.0f} us, "
            f"p99 {both['p99']:.0f} us",
            stats=both,
            fetch=fetch,
            ack=ack,
            floor=floor["pair"],
        ),
        *(
            bench.row(
                f"pull agent: {how}",
                rates[separate],
                "msgs/s",
                f"durable echo, {trips} of 100 rows",  # (marked delivered)
                100 / (floor[key]["p50"] / 1e6),
                rates[separate] / (100 / (floor[key]["p50"] / 1e6)),
                note=f"{cfg.backlog:,} messages, 100 / the p50 of a batch, as the floor; all of them took "
                f"{cfg.backlog / overall[separate]:.2f} s: {overall[separate]:,.0f} msgs/s",
                floor=floor[key],
                overall_msgs_s=overall[separate],
            )
            for separate, how, trips, key in (
                (False, "inbox(limit=100, ack=True)", "1 round trip", "batch"),
                (True, "inbox(limit=100), then ack of its 100 ids", "2 round trips", "batch_pair"),
            )
        ),
    ]


def table(rows: list[dict], cfg, machine: dict) -> str:
    out = [
        f"coordd inbox bench{' --quick' if cfg.quick else ''}: {machine['nproc']} CPUs ({machine['cpu']}), "
        f"Python {machine['python']}, SQLite {machine['sqlite']}, {machine['date']}. One pull agent, one Client; "
        "ratio: latency / floor, throughput / floor.",
        "",
        "| benchmark | result | floor (same run) | ratio |",
        "|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['name']} ({r['note']}) | {bench.fmt(r['value'], r['unit'])} | "
            f"{r['floor_name']}: {bench.fmt(r['floor_value'], r['unit'])} | {r['ratio']:.2f}x |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run, as a smoke check")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_inbox.json"))
    args = ap.parse_args()
    q = args.quick
    cfg = argparse.Namespace(
        quick=q,
        warmup=100 if q else 500,
        single=500 if q else 3000,
        backlog=2000 if q else 10_000,  # at most queue.max_per_agent
        batches=20 if q else 200,
    )
    machine = bench.machine()
    rows = run(cfg)
    print(table(rows, cfg, machine), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "config": vars(cfg), "rows": rows}, indent=1) + "\n")
    print(f"\nJSON: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
