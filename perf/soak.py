"""Soak: a million messages through one coordd with retention 100,000; memory and disk must stay bounded.

Not part of CI (it takes minutes). It starts coordd from this source tree on a
temp socket, database and workspace, sends --messages messages in batches to
--agents agents, and samples the daemon's RSS (/proc/PID/status) and the
database's size (file + WAL) while it runs. Agents are `discard` agents (a
transport for benchmarks only: each message counts as delivered at once), or
with --transport inbox real inbox agents whose files this script deletes as
they arrive. At the end every message must be delivered and none failed.

    python perf/soak.py [--messages 1000000] [--transport discard|inbox]

Prints a Markdown table and writes perf/results/soak.json. Exits 1 when a bound
is broken: peak RSS over --rss-limit-mb, or the database over --db-limit-mb.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordctl import Client, CoordError  # noqa: E402


def memory_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


class Sampler(threading.Thread):
    """Samples RSS and database size every `period` seconds until stopped."""

    def __init__(self, pid: int, db: Path, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.db, self.period = pid, db, period
        self.stop = threading.Event()
        self.samples: list[tuple[float, int, int]] = []  # (t, rss KiB, db bytes)

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.wait(self.period):
            self.samples.append((time.monotonic() - t0, memory_kib(self.pid, "VmRSS"), db_bytes(self.db)))


class Remover(threading.Thread):
    """For --transport inbox: deletes message files as they arrive, as an agent reading its inbox would."""

    def __init__(self, inboxes: list[Path], expected: int) -> None:
        super().__init__(daemon=True)
        self.inboxes, self.expected = inboxes, expected
        self.removed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while self.removed < self.expected and not self.stop.is_set():
            found = 0
            for inbox in self.inboxes:
                try:
                    entries = list(os.scandir(inbox))
                except FileNotFoundError:
                    continue
                for e in entries:
                    if e.name.endswith(".md"):
                        os.unlink(e.path)
                        found += 1
            self.removed += found
            if not found:
                self.stop.wait(0.02)  # noqa: sleep-ok: the poll interval of a directory watcher


def start_daemon(tmp: Path, args) -> tuple[subprocess.Popen, Path, Path, list[Path]]:
    sock, db, ws = tmp / "run" / "coordd.sock", tmp / "state" / "coordd.db", tmp / "ws"
    agents = [f"Soak-{n}" for n in range(1, args.agents + 1)]
    lines = [
        "[daemon]",
        f'socket = "{sock}"',
        f'workspace = "{ws}"',
        'log_level = "warning"',
        "[store]",
        f'path = "{db}"',
        "[retention]",
        f"max_messages = {args.retention}",
        "inbox_max_files = 0",  # the Remover counts every file as the agent deletes it: coordd removes none
    ]
    for a in agents:
        lines += ["[[agents]]", f'id = "{a}"', f'transport = "{args.transport}"']
    config = tmp / "coordd.toml"
    config.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("COORDD_CONFIG", None)
    log = open(tmp / "coordd.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "coordd", "run", "--config", str(config)], env=env, stderr=log)
    deadline = time.monotonic() + 30
    while True:
        try:
            with Client(str(sock), timeout=5) as c:
                c.ping()
            break
        except CoordError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"coordd did not start: {(tmp / 'coordd.log').read_text()}") from None
            time.sleep(0.05)  # noqa: sleep-ok: the poll interval of a deadline-bounded wait
    inboxes = [ws / "agent_workspaces" / a / "inbox" for a in agents]
    return proc, sock, db, inboxes


def send_all(c: Client, args, agents: list[str]) -> int:
    """Send args.messages messages in batches; on queue_full wait for the queue to drain. Returns refusals."""
    body_pad = "x" * max(0, args.body_bytes - 40)
    sent = refused = 0
    while sent < args.messages:
        n = min(args.batch, args.messages - sent)
        batch = [
            {"to": agents[(sent + i) % len(agents)], "body": f"soak message {sent + i} {body_pad}", "sender": "soak"}
            for i in range(n)
        ]
        try:
            c.batch(batch)
        except CoordError as e:
            if e.code != "queue_full":
                raise
            refused += 1
            deadline = time.monotonic() + 60
            while c.status().queued > args.batch * 4:
                if time.monotonic() > deadline:
                    raise SystemExit("the queue did not drain within 60 s") from None
                time.sleep(0.01)  # noqa: sleep-ok: the poll interval of a deadline-bounded wait
            continue
        sent += n
    return refused


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--retention", type=int, default=100_000, help="retention.max_messages")
    ap.add_argument("--transport", choices=["discard", "inbox"], default="discard")
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--body-bytes", type=int, default=100)
    ap.add_argument("--rss-limit-mb", type=float, default=80)
    ap.add_argument("--db-limit-mb", type=float, default=48)
    ap.add_argument("--out", default=str(ROOT / "perf" / "results" / "soak.json"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="coordd-soak-"))
    proc, sock, db, inboxes = start_daemon(tmp, args)
    agents = [f"Soak-{n}" for n in range(1, args.agents + 1)]
    sampler = Sampler(proc.pid, db)
    remover = Remover(inboxes, args.messages) if args.transport == "inbox" else None
    try:
        rss_start = memory_kib(proc.pid, "VmRSS")
        sampler.start()
        if remover:
            remover.start()
        t0 = time.monotonic()
        with Client(str(sock)) as c:
            refused = send_all(c, args, agents)
            t_sent = time.monotonic()
            deadline = t_sent + 600
            while (st := c.status()).queued or (remover and remover.removed < args.messages):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"deliveries did not finish: {st.queued} queued")
                time.sleep(0.02)  # noqa: sleep-ok: the poll interval of a deadline-bounded wait
            t_done = time.monotonic()
            failed = sum(a.failed for a in st.agents)
            # Let one retention pass finish, then read the settled figures.
            c.send(agents[0], "the last one", wait=True)
            st = c.status()
        sampler.stop.set()
        sampler.join()
        peak_rss = memory_kib(proc.pid, "VmHWM")
        result = {
            "messages": args.messages,
            "transport": args.transport,
            "agents": args.agents,
            "batch": args.batch,
            "body_bytes": args.body_bytes,
            "retention_max_messages": args.retention,
            "accept_seconds": round(t_sent - t0, 2),
            "accepted_per_s": round(args.messages / (t_sent - t0)),
            "delivered_seconds": round(t_done - t0, 2),
            "delivered_per_s": round(args.messages / (t_done - t0)),
            "queue_full_waits": refused,
            "failed": failed,
            "rss_start_mb": round(rss_start / 1024, 1),
            "peak_rss_mb": round(peak_rss / 1024, 1),
            "peak_sampled_rss_mb": round(max(s[1] for s in sampler.samples) / 1024, 1),
            "peak_db_mb": round(max(s[2] for s in sampler.samples) / 2**20, 1),
            "final_db_mb": round(db_bytes(db) / 2**20, 1),
            "final_rows": st.rows,
            "rss_limit_mb": args.rss_limit_mb,
            "db_limit_mb": args.db_limit_mb,
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        if remover:
            remover.stop.set()
    result["ok"] = (
        result["peak_rss_mb"] <= args.rss_limit_mb
        and result["peak_db_mb"] <= args.db_limit_mb
        and failed == 0
        and st.rows <= args.retention + args.batch
    )
    rows = [
        ("messages", f"{args.messages:,} via {args.transport} agents ({args.agents}), batches of {args.batch}"),
        ("retention.max_messages", f"{args.retention:,} (rows at the end: {st.rows:,})"),
        ("accepted", f"{result['accepted_per_s']:,} msg/s ({result['accept_seconds']} s)"),
        ("delivered", f"{result['delivered_per_s']:,} msg/s, all of them after {result['delivered_seconds']} s"),
        ("failed", str(failed)),
        ("peak RSS", f"{result['peak_rss_mb']} MB (limit {args.rss_limit_mb:g}; {result['rss_start_mb']} MB at start)"),
        (
            "peak database + WAL",
            f"{result['peak_db_mb']} MB (limit {args.db_limit_mb:g}; {result['final_db_mb']} MB at the end)",
        ),
        ("within bounds", "yes" if result["ok"] else "NO"),
    ]
    print("| soak | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
