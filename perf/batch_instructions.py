#!/usr/bin/env python3
"""Where a batch's cost goes, in instructions (callgrind): the same on a quiet machine and a loaded one.

Runs coordd under `valgrind --tool=callgrind` twice, delivery held (every inbox under a regular file, as
bench.py's "no deliveries" row), sending FEW and then MANY batches of 1,000 messages; the difference over
MANY - FEW batches is what one batch costs the daemon, start-up cancelled out. The same is done for the
floor: a bare process that builds coordd's rows and commits them with one executemany, then indexes them
for search (schema.INDEX_NEW) in a transaction of its own, as the daemon does. Prints instructions per batch
of 1,000: the daemon's total, its executemany, its other SQLite statements (BEGIN/COMMIT and the search
index), msgspec's decoding, and the rest (Python: checks, records, queues, the loop), against the floor's.
Slow: a few minutes. Usage: python perf/batch_instructions.py [--few 5] [--many 25]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # (perf/bench.py: the agents, and stopping a process by pid)

N = 1000
FUNCTIONS = {  # callgrind_annotate's inclusive counts of these C functions
    "executemany": "pysqlite_connection_executemany",
    "other SQL": "pysqlite_connection_execute",
    "decode": "Decoder_decode",
}

DAEMON_LOAD = r"""
import sys, time
from coordctl import Client
from coordctl.protocol import NewMessage
sock, n = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 300
while True:
    try:
        c = Client(sock, timeout=60); c.ping(); break
    except Exception:
        if time.monotonic() > deadline: raise
msgs = [NewMessage(to=f"Agent-{i % 8 + 1}", body=f"bench message {i}", sender="bench") for i in range(1000)]
for _ in range(n + 1):  # one more: a warm-up
    c.batch(msgs)
"""

FLOOR = r"""
import os, sys, sqlite3, time
from coordd.model import Record, rows
from coordd.schema import INDEX_NEW, INSERT_MESSAGE, MIGRATIONS
path, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(path, isolation_level=None)
for pragma in ("auto_vacuum = INCREMENTAL", "journal_mode = WAL", "synchronous = NORMAL"):
    db.execute(f"PRAGMA {pragma}")
for m in MIGRATIONS:
    db.executescript(m)
for r in range(n + 1):
    batch = rows(Record(r * 1000 + i + 1, f"Agent-{i % 8 + 1}", f"bench message {i}", "regular", time.time(), "bench")
                 for i in range(1000))
    db.execute("BEGIN IMMEDIATE"); db.executemany(INSERT_MESSAGE, batch); db.execute("COMMIT")
    db.execute("BEGIN IMMEDIATE"); db.execute(INDEX_NEW, (r * 1000 + 1, r * 1000 + 1000)); db.execute("COMMIT")
"""


def counts(out: str) -> dict[str, int]:
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", out], capture_output=True, text=True, check=True
    ).stdout
    total = int(re.search(r"^\s*([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text, re.M)[1].replace(",", ""))
    found = {"total": total}
    for name, fn in FUNCTIONS.items():
        m = re.search(rf"^\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*:{re.escape(fn)}(?:\s|$)", text, re.M)
        found[name] = int(m[1].replace(",", "")) if m else 0
    return found


def callgrind(cmd: list[str], out: str, load: list[str] | None = None) -> dict[str, int]:
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd])
    try:
        if load is not None:
            subprocess.run(load, check=True)
            bench.stop(proc)
        proc.wait()
    finally:
        bench.stop(proc)
    return counts(out)


def daemon_run(tmp: Path, n: int) -> dict[str, int]:
    run = tmp / f"d{n}"
    run.mkdir()
    (run / "blocked").touch()
    sock = str(run / "run" / "coordd.sock")
    config = run / "coordd.toml"
    inbox = f'inbox_dir = "{run / "blocked" / "inbox"}"\n'
    config.write_text(
        f'[daemon]\nsocket = "{sock}"\nworkspace = "{run / "ws"}"\nlog_level = "warning"\n'
        f'[store]\npath = "{run / "state" / "coordd.db"}"\n'
        + "".join(f'[[agents]]\nid = "{a}"\n{inbox}' for a in bench.AGENTS)
    )
    cmd = [sys.executable, "-m", "coordd", "run", "--config", str(config)]
    return callgrind(cmd, str(run / "cg.out"), [sys.executable, "-c", DAEMON_LOAD, sock, str(n)])


def floor_run(tmp: Path, n: int) -> dict[str, int]:
    return callgrind([sys.executable, "-c", FLOOR, str(tmp / f"floor{n}.db"), str(n)], str(tmp / f"floor{n}.out"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--few", type=int, default=5)
    ap.add_argument("--many", type=int, default=25)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="coordd-cg-") as d:
        tmp = Path(d)
        per = {}
        for name, run in (("coordd", daemon_run), ("floor", floor_run)):
            few, many = run(tmp, args.few), run(tmp, args.many)
            print(f"{name}: {args.few} batches {few}, {args.many} batches {many}", file=sys.stderr)
            per[name] = {k: (many[k] - few[k]) / (args.many - args.few) for k in many}
    floor = per["floor"]["executemany"]
    print(f"instructions per batch of {N:,} (callgrind, {args.many} minus {args.few} batches), delivery held\n")
    print("| part | coordd | floor process | coordd / executemany floor |")
    print("|---|---|---|---|")
    for part in ("executemany", "other SQL", "decode", "rest", "total"):
        if part == "rest":
            c, f = (p["total"] - sum(p[k] for k in FUNCTIONS) for p in (per["coordd"], per["floor"]))
        else:
            c, f = per["coordd"][part], per["floor"][part]
        print(f"| {part} | {c / 1e6:,.1f}M | {f / 1e6:,.1f}M | {c / floor:.2f}x |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
