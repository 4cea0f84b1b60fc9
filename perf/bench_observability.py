#!/usr/bin/env python3
"""What metrics and watchers cost the senders: a Markdown table on stdout, JSON in
perf/results/bench_observability.json.

Daemons alike but for what observes them (8 inbox agents, as perf/bench.py):
- baseline: no metrics, no events at all (COORDD_BENCH_NO_OBSERVER=1: the hooks stay no-ops);
- baseline again: the same, measured as a variant: how far it lands from the baseline is the noise;
- metrics: the default, plus the HTTP endpoint scraped once a second by another process;
- metrics + 1 watcher: plus a process reading every event with Client.watch (the target's case);
- metrics + `coordctl watch --json`: the same through the CLI, printing JSON Lines (to /dev/null);
- metrics + 1 stuck watcher: plus a watch that never reads (it fills its buffers, then events are counted).
Each is measured for sequential sends (one Client, p50/p99) and for aggregate throughput (8 client
processes), in rounds that take the variants in turn, so that they share the machine's noise; the
figures are medians over the rounds, and each cost the median of the per-round ratios to that round's
baseline. The CPU the daemon used per message is shown too: unlike latency and throughput, it hardly
depends on what else the machine is doing. The target: metrics + 1 watcher within 10% of the baseline.
Nothing asserts on time. Usage: python perf/bench_observability.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
# This checkout's code, installed or not, for us and for the daemons and clients we start.
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))

import bench  # noqa: E402  (perf/bench.py: its helpers and its way of running a daemon)
import rounds  # noqa: E402  (perf/rounds.py: the variants in rotating rounds, their paired costs)

VARIANTS = (
    "baseline",
    "baseline again",
    "metrics",
    "metrics + 1 watcher",
    "metrics + `coordctl watch --json`",
    "metrics + 1 stuck watcher",
)
UNOBSERVED = ("baseline", "baseline again")  # the second shows how far two identical daemons differ: the noise
JUDGED = "metrics + 1 watcher"
TARGET = 0.10

# The least a watcher does: read every event (coordctl's Client.watch) and drop it.
WATCHER = r"""
import sys
from coordctl import Client
for _ in Client(sys.argv[1]).watch():
    pass
"""

SCRAPER = r"""
import sys, time, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=10).read()
print("scraped", flush=True)  # the bench measures from now on
while True:
    time.sleep(1)  # noqa: sleep-ok: the scrape interval
    urllib.request.urlopen(sys.argv[1], timeout=10).read()
"""


@contextlib.contextmanager
def daemon(variant: str):
    """A coordd for one variant, with its observers running; stopped by pid, its temp dir removed."""
    from coordctl import Client, protocol

    listen = "" if variant in UNOBSERVED else '[metrics]\nlisten = "127.0.0.1:0"\n'
    off = os.environ.pop("COORDD_BENCH_NO_OBSERVER", None)
    if variant in UNOBSERVED:
        os.environ["COORDD_BENCH_NO_OBSERVER"] = "1"  # bench.service hands os.environ to the daemon
    helpers: list[subprocess.Popen] = []
    stuck = None
    try:
        with bench.daemon(extra_config=listen) as d:
            os.environ.pop("COORDD_BENCH_NO_OBSERVER", None)
            sock, tmp, proc = d.socket, d.tmp, d.proc
            with Client(sock) as c:
                url = c.status().metrics_url
                if url:
                    scraper = subprocess.Popen([sys.executable, "-c", SCRAPER, url], cwd=tmp, stdout=subprocess.PIPE)
                    helpers.append(scraper)
                    scraper.stdout.readline()  # its first scrape is done: a steady state from here
                watcher = None
                if variant == JUDGED:
                    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, sock], cwd=tmp)
                elif "coordctl watch" in variant:
                    watcher = subprocess.Popen(
                        [sys.executable, "-m", "coordctl", "--socket", sock, "watch", "--json"],
                        cwd=tmp,
                        stdout=subprocess.DEVNULL,
                    )
                helpers += [watcher] if watcher else []
                if "stuck" in variant:
                    stuck = socket.socket(socket.AF_UNIX)
                    stuck.connect(sock)
                    req = protocol.encoder.encode(protocol.Watch(rid=1))
                    stuck.sendall(len(req).to_bytes(4, "big") + req)
                want = 0 if variant in (*UNOBSERVED, "metrics") else 1
                bench.wait_until(lambda: c.status().watchers == want, 20, "the watcher to subscribe", proc)
            ns = SimpleNamespace(socket=sock, tmp=tmp, proc=proc, missed=0.0, watcher=watcher)
            yield ns
            with Client(sock) as c:  # what a stuck watcher missed in the run
                ns.missed = _missed(c.metrics()) if variant not in UNOBSERVED else 0.0
            for h in helpers:  # before the daemon stops, so that none of them complains
                bench.stop(h)
    finally:
        if off is not None:
            os.environ["COORDD_BENCH_NO_OBSERVER"] = off
        for h in helpers:
            bench.stop(h)
        if stuck is not None:
            stuck.close()


def _missed(text: str) -> float:
    line = next((ln for ln in text.splitlines() if ln.startswith("coordd_watch_events_missed_total")), "x 0")
    return float(line.split()[-1])


# Where a process runs decides a round trip more than anything else here: a wake-up across CPUs costs
# ~60 us on these VMs, on the same CPU ~8 us (see perf/README.md). So every variant gets the same
# placement: the daemon (all its threads) on the last CPU; the sequential client on the first.
CPUS = sorted(os.sched_getaffinity(0))


def pin_daemon(pid: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(tid), {CPUS[-1]})


@contextlib.contextmanager
def pinned_here():
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CPUS[0]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)


def cpu_ns(pid: int) -> int:
    """CPU time a process has used so far, all its threads, in ns (from /proc/PID/task/*/schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def measure(variant: str, cfg) -> dict:
    """One variant on a fresh daemon: sequential sends, then 8 sending processes; the CPU each used."""
    from coordctl import Client

    with daemon(variant) as d:
        pin_daemon(d.proc.pid)
        with Client(d.socket) as c, pinned_here():
            bench.timed_sends(c, cfg.warmup)
            cpu0 = cpu_ns(d.proc.pid), d.watcher and cpu_ns(d.watcher.pid)
            seq = bench.stats_us(bench.timed_sends(c, cfg.sends))
        rate = bench.concurrent("send", d.socket, cfg.per_client, d.tmp)[0]
        sent = cfg.sends + 8 * cfg.per_client
        daemon_cpu = (cpu_ns(d.proc.pid) - cpu0[0]) / sent / 1000
        watcher_cpu = (cpu_ns(d.watcher.pid) - cpu0[1]) / sent / 1000 if d.watcher else None
    return {"seq": seq, "rate": rate, "daemon_cpu_us": daemon_cpu, "watcher_cpu_us": watcher_cpu, "missed": d.missed}


def hook_cost(n: int) -> dict[str, float]:
    """The hooks' own cost per message, in process and without I/O: what a send and its delivery call
    (answered, accepted, delivering, delivered), with no watcher and with one whose writes cost nothing."""
    import asyncio
    import time

    from coordctl import protocol
    from coordd.events import EventBus
    from coordd.metrics import Metrics
    from coordd.model import Record
    from coordd.observer import Observer

    class Sink:
        def push(self, data: bytes) -> bool:
            return True

    async def per_message(watchers: int) -> float:
        observer = Observer(Metrics(), EventBus())
        for rid in range(watchers):
            observer.bus.subscribe(Sink(), rid + 1, [], [])
        req, recs = protocol.Send(to="Agent-1", body="bench message"), []
        t0 = bench.pc()
        for i in range(n):
            recs = [Record(id=i, agent="Agent-1", body="bench message", priority="regular", created=time.time())]
            observer.answered(req, time.perf_counter(), None)
            observer.accepted(recs)
            observer.delivering("Agent-1", recs)
            observer.delivered("Agent-1", recs, time.time())
        return (bench.pc() - t0) / n / 1000

    async def both() -> dict[str, float]:
        return {"metrics": await per_message(0), "metrics + 1 watcher": await per_message(1)}

    return asyncio.run(both())


def run(cfg) -> list[dict[str, dict]]:
    return rounds.rotating(VARIANTS, cfg.rounds, lambda v: measure(v, cfg))


def summarize(results: list[dict[str, dict]]) -> list[dict]:
    """Medians over the rounds; each cost is the median of the per-round ratios to that round's baseline
    (paired: a round's variants share its moment's noise, as other work on the machine comes and goes)."""
    med = statistics.median
    rows = []
    for v in VARIANTS:
        runs = [r[v] for r in results]
        p50_cost, rate_cost, cpu_cost = rounds.costs(results, v, "baseline")
        judged = v == JUDGED
        watcher = [x["watcher_cpu_us"] for x in runs if x["watcher_cpu_us"] is not None]
        rows.append(
            {
                "variant": v,
                "send_p50_us": med(x["seq"]["p50"] for x in runs),
                "send_p99_us": med(x["seq"]["p99"] for x in runs),
                "rate_msgs_s": med(x["rate"] for x in runs),
                "daemon_cpu_us_per_msg": med(x["daemon_cpu_us"] for x in runs),
                "watcher_cpu_us_per_msg": med(watcher) if watcher else None,
                "p50_cost": p50_cost,
                "throughput_cost": rate_cost,
                "daemon_cpu_cost": cpu_cost,
                "missed": max(x["missed"] for x in runs),
                "target": f"< {TARGET:.0%}" if judged else "-",
                "ok": (p50_cost < TARGET and rate_cost < TARGET) if judged else None,
            }
        )
    return rows


def table(rows: list[dict], cfg, machine: dict) -> str:
    out = [
        f"coordd observability bench{' --quick' if cfg.quick else ''}: {machine['nproc']} CPUs ({machine['cpu']}), "
        f"Python {machine['python']}, {machine['date']}, load average {os.getloadavg()[0]:.2f} at the end. "
        f"{cfg.rounds} rounds; sequential: {cfg.sends} sends on one Client (daemon and client pinned to different "
        f"CPUs); throughput: 8 processes x {cfg.per_client} sends. Figures are medians over the rounds; each "
        '"vs baseline" is the median of the per-round ratios.',
        "",
        "| variant | send p50 | vs baseline | send p99 | 8-process throughput | vs baseline | daemon CPU per message "
        "| vs baseline | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = {True: ": pass", False: ": **FAIL**", None: ""}[r["ok"]]
        note = f" ({r['missed']:,.0f} events missed by it)" if r["missed"] else ""
        if r["watcher_cpu_us_per_msg"] is not None:
            note += f" (the watcher process: {r['watcher_cpu_us_per_msg']:.1f} us CPU per message)"
        out.append(
            f"| {r['variant']}{note} | {r['send_p50_us']:.1f} us | {r['p50_cost']:+.1%} | "
            f"{r['send_p99_us']:.1f} us | {r['rate_msgs_s']:,.0f} msgs/s | {-r['throughput_cost']:+.1%} | "
            f"{r['daemon_cpu_us_per_msg']:.1f} us | {r['daemon_cpu_cost']:+.1%} | {r['target']}{verdict} |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run, as a smoke check")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_observability.json"))
    args = ap.parse_args()
    q = args.quick
    cfg = argparse.Namespace(
        quick=q,
        rounds=1 if q else 10,
        warmup=200 if q else 300,
        sends=500 if q else 3000,
        per_client=200 if q else 1500,
    )
    machine = bench.machine()
    rounds = run(cfg)
    rows = summarize(rounds)
    hooks = hook_cost(20_000 if q else 200_000)
    base_cpu = next(r["daemon_cpu_us_per_msg"] for r in rows if r["variant"] == "baseline")
    print(table(rows, cfg, machine), flush=True)
    print(
        f"\nThe hooks alone, in process, no I/O, per message (answered, accepted, delivering, delivered): "
        f"{hooks['metrics']:.2f} us with metrics only, {hooks['metrics + 1 watcher']:.2f} us with one watcher "
        f"({hooks['metrics + 1 watcher'] / base_cpu:.1%} of the baseline daemon's {base_cpu:.0f} us CPU per message)."
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"machine": machine, "config": vars(cfg), "rows": rows, "hooks_us": hooks, "rounds": rounds}, indent=1
        )
        + "\n"
    )
    print(f"\nJSON: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
