#!/usr/bin/env python3
"""Two nodes over NATS JetStream: a Markdown table on stdout, JSON in perf/results/bench_cluster.json.

One nats-server (JetStream, loopback, a temp dir) and two coordd nodes: alpha (agent A-1) and beta (agent B-1,
discard transport: a delivery goes nowhere, so what is measured is the hop between nodes). Rows:
- remote send to delivered: `send(wait=True)` from alpha to B-1, one at a time: committed at alpha, published,
  fetched and committed at beta, delivered, its receipt published and applied at alpha (p50, p99);
- throughput: 10,000 messages from alpha to B-1 (batches of 1,000), until beta has delivered all, and until
  alpha holds every delivered receipt.
The floor, in the same run on the same server: bare nats-py JetStream, a publish awaited (PubAck) and a durable
pull consumer fetching and acking it (one at a time: p50; then 10,000 published with publish_async and consumed
in fetches of 256). coordd adds two SQLite commits, a delivery and a receipt's trip back to that. Nothing asserts
on time. Usage: python perf/bench_cluster.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"
TARGET_P50_MS, TARGET_RATE = 3.0, 5000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.002)  # noqa: sleep-ok: the poll interval of a deadline-bounded wait
    return value


def start_nats(tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp / "js")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def accepts() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                return s.recv(4).startswith(b"INFO")
        except OSError:
            return False

    wait_until(accepts, 10, "nats-server")
    return proc, f"nats://127.0.0.1:{port}"


def start_node(tmp: Path, url: str, node: str, agent: str, transport: str) -> tuple[subprocess.Popen, str, str]:
    d = tmp / node
    d.mkdir()
    sock, db = str(d / "coordd.sock"), str(d / "coordd.db")
    (d / "coordd.toml").write_text(
        f'[daemon]\nsocket = "{sock}"\nworkspace = "{d / "ws"}"\n[store]\npath = "{db}"\n'
        f'[retention]\ninbox_max_files = 0\n[cluster]\nnats = "{url}"\nnode = "{node}"\nheartbeat_s = 0.5\n'
        f'[[agents]]\nid = "{agent}"\ntransport = "{transport}"\n'
    )
    log = open(d / "coordd.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordd", "run", "--config", str(d / "coordd.toml")], stdout=log, stderr=log
    )
    from coordctl import Client, CoordError

    def answers() -> bool:
        try:
            with Client(sock) as c:
                c.ping()
            return True
        except CoordError:
            return False

    wait_until(answers, 20, f"coordd {node}")
    return proc, sock, db


def count(db: str, sql: str) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def bench_coordd(a_sock: str, a_db: str, b_db: str, latency_n: int, n: int) -> dict:
    from coordctl import Client

    with Client(a_sock) as c:
        wait_until(lambda: "B-1" in {x.id for x in c.agents()}, 20, "alpha to learn B-1")
        for _ in range(20):  # warm up both nodes' paths
            c.send("B-1", "warm", sender="A-1", wait=True)
        lat = []
        for _ in range(latency_n):
            t0 = time.perf_counter()
            c.send("B-1", "bench message", sender="A-1", wait=True)
            lat.append(time.perf_counter() - t0)
        base_b = count(b_db, "SELECT count(*) FROM messages WHERE status = 'delivered'")
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            c.batch([{"to": "B-1", "body": "bench message", "sender": "A-1"}] * min(1000, n - start))
        accepted = time.perf_counter() - t0
    done_b = "SELECT count(*) FROM messages WHERE status = 'delivered'"
    wait_until(lambda: count(b_db, done_b) >= base_b + n, 300, "beta to deliver all")
    at_b = time.perf_counter() - t0
    wait_until(lambda: count(a_db, "SELECT count(*) FROM messages WHERE status != 'delivered'") == 0, 300, "receipts")
    at_a = time.perf_counter() - t0
    return {
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": sorted(lat)[int(len(lat) * 0.99) - 1] * 1000,
        "accepted_per_s": n / accepted,
        "delivered_per_s": n / at_b,
        "receipted_per_s": n / at_a,
    }


async def bench_floor(url: str, latency_n: int, n: int) -> dict:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="FLOOR", subjects=["floor.>"], duplicate_window=120)
    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1024)
    sub = await js.pull_subscribe("floor.x", durable="floor", stream="FLOOR", config=config)
    payload = b"x" * 64
    lat = []
    for i in range(20 + latency_n):
        t0 = time.perf_counter()
        await js.publish("floor.x", payload, headers={"Nats-Msg-Id": f"l{i}"})
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack()
        if i >= 20:
            lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()

    async def consume() -> None:
        got = 0
        while got < n:
            for m in await sub.fetch(256, timeout=5):
                await m.ack()
                got += 1

    consumer = asyncio.ensure_future(consume())
    acks = [await js.publish_async("floor.x", payload, headers={"Nats-Msg-Id": f"t{i}"}) for i in range(n)]
    await asyncio.gather(*acks)
    await consumer
    elapsed = time.perf_counter() - t0
    await nc.close()
    return {
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": sorted(lat)[int(len(lat) * 0.99) - 1] * 1000,
        "per_s": n / elapsed,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_cluster.json"))
    args = ap.parse_args()
    latency_n, n = (50, 1000) if args.quick else (500, 10_000)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    procs: list[subprocess.Popen] = []
    try:
        nats_proc, url = start_nats(tmp)
        procs.append(nats_proc)
        floor = asyncio.run(bench_floor(url, latency_n, n))
        a, a_sock, a_db = start_node(tmp, url, "alpha", "A-1", "inbox")
        b, _, b_db = start_node(tmp, url, "beta", "B-1", "discard")
        procs += [a, b]
        got = bench_coordd(a_sock, a_db, b_db, latency_n, n)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                print(f"pid {p.pid} did not stop in 20 s: killed; logs in {tmp}", file=sys.stderr)
                p.kill()
                tmp = Path("/nonexistent")  # keep the logs
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        (
            "remote send to delivered, p50 (ms)",
            got["p50_ms"],
            floor["p50_ms"],
            f"<= {TARGET_P50_MS}",
            got["p50_ms"] <= TARGET_P50_MS,
        ),
        ("remote send to delivered, p99 (ms)", got["p99_ms"], floor["p99_ms"], "", None),
        (f"{n:,} messages: accepted at alpha (msg/s)", got["accepted_per_s"], None, "", None),
        (
            f"{n:,} messages: delivered at beta (msg/s)",
            got["delivered_per_s"],
            floor["per_s"],
            f">= {TARGET_RATE:,}",
            got["delivered_per_s"] >= TARGET_RATE,
        ),
        (f"{n:,} messages: receipts back at alpha (msg/s)", got["receipted_per_s"], floor["per_s"], "", None),
    ]
    print(f"| {'row':<44} | {'coordd':>9} | {'floor (bare nats-py)':>20} | target | met |")
    print(f"| {'-' * 44} | {'-' * 9}: | {'-' * 20}: | ------ | --- |")
    for name, value, fl, target, met in rows:
        fl_text = f"{fl:,.2f}" if fl is not None else "-"
        met_text = "" if met is None else ("yes" if met else "NO")
        print(f"| {name:<44} | {value:>9,.2f} | {fl_text:>20} | {target} | {met_text} |")
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    result = {"machine": machine, "messages": n, "latency_samples": latency_n, "coordd": got, "floor": floor}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
