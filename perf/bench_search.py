#!/usr/bin/env python3
"""Full-text search at 100k messages: a Markdown table on stdout, JSON in perf/results/bench_search.json.

One coordd (8 inbox agents, as perf/bench.py) is filled with 100,000 messages through its `batch`
request, 1,000 a request, and every one is delivered before anything is measured. The messages are
generated from a fixed seed: 15 to 60 words each drawn from English function words, a developer's
vocabulary (both Zipf-weighted) and 20,000 made-up words whose Zipf tail makes most of them rare, plus
ticket ids and paths; 40% have a subject. The queries are then picked from the index's own vocabulary
(fts5vocab), by how many messages hold them: a rare word (in 5 to 20), the most common word, two words
each in 1-5%, a two-word phrase that occurs, and the common word with an agent filter.

Each query kind is timed through the client, `history(search=..., limit=20)` (p50 and p99 of its round
trips), against a floor from the same run: the same SQL (coordd.reads.search_sql, with
coordd.fts.match_expression's MATCH expression and the same LIMIT) run by sqlite3 on the same database in
a plain process, rows fetched. Target: under 50 ms at p99. Also shown: how long the fill took, and
how long schema 6's migration takes to index a copy of the 100,000 rows (an upgrade).
Nothing asserts on time. Usage: python perf/bench_search.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (perf/bench.py: its helpers and its way of running a daemon)

pc = time.perf_counter_ns
TARGET_MS = 50.0
PAGE = 20  # messages a page: what a person or an agent reads first


def words(text: str) -> list[str]:
    return text.split()


FUNCTION_WORDS = words(
    "the to of and a in is it for on that with this be not are as at we but or from have was by can if "
    "so will there all should now then when what which just still also only need after before again"
)
DEV_WORDS = words(
    "deploy build test tests failed failing passed merge review branch commit release rollback staging "
    "production database migration schema index query latency timeout retry error exception stack trace "
    "log logs config configuration service api endpoint request response client server socket queue "
    "worker job task agent message inbox thread reply ack lease pull push cache memory cpu disk network "
    "docker container kubernetes pod node cluster restart crash panic bug fix patch refactor cleanup "
    "feature flag rollout canary metrics dashboard alert oncall incident postmortem ticket issue pr "
    "ci pipeline lint typecheck coverage benchmark regression flaky slow fast upgrade version dependency "
    "package module function class method variable parameter return value null undefined type interface "
    "auth token permission user session cookie header payload json yaml toml sql sqlite postgres redis "
    "nats kafka grpc http tls certificate dns proxy load balancer scale shard replica backup restore"
)


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1 / (k**s) for k in range(1, n + 1)]


def made_up_words(rng: random.Random, n: int) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["qu", "th", "sh", "ch", "st"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    shuffled = sorted(words)
    rng.shuffle(shuffled)  # which words are common: any, not the first in alphabetical order
    return shuffled


def messages(n: int, seed: int = 12) -> list[dict]:
    """n messages (dicts for Client.batch), the same for the same seed."""
    rng = random.Random(seed)
    pools = [
        (FUNCTION_WORDS, zipf_weights(len(FUNCTION_WORDS), 0.9), 0.35),
        (DEV_WORDS, zipf_weights(len(DEV_WORDS)), 0.35),
        (made_up := made_up_words(rng, 20_000), zipf_weights(len(made_up)), 0.30),
    ]
    cum = [(words, list(_cumulative(weights))) for words, weights, _ in pools]
    pool_cum = list(_cumulative([share for *_, share in pools]))
    out = []
    for i in range(n):
        length = rng.randint(15, 60)
        which = rng.choices(range(3), cum_weights=pool_cum, k=length)
        words = [w for p in range(3) for w in rng.choices(cum[p][0], cum_weights=cum[p][1], k=which.count(p))]
        rng.shuffle(words)
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), f"PR-{rng.randint(1, 9999)}")
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), f"src/{rng.choice(DEV_WORDS)}/{rng.choice(made_up)}.py")
        m = {"to": bench.AGENTS[i % 8], "body": " ".join(words), "sender": bench.AGENTS[(i + 3) % 8]}
        if rng.random() < 0.4:
            m["subject"] = " ".join(rng.choices(cum[1][0], cum_weights=cum[1][1], k=rng.randint(3, 7)))
        out.append(m)
    return out


def _cumulative(weights: list[float]):
    total = 0.0
    for w in weights:
        total += w
        yield total


def fill(c, msgs: list[dict], per_batch: int = 1000) -> float:
    """Send msgs in batches; seconds until every one is delivered."""
    t0 = time.monotonic()
    for i in range(0, len(msgs), per_batch):
        c.batch(msgs[i : i + per_batch])
    bench.wait_until(lambda: c.status().queued == 0, 600, "every message delivered")
    return time.monotonic() - t0


def pick_queries(db_path: str, rng: random.Random) -> dict[str, tuple[str, int]]:
    """Query kind -> (the search text, how many messages hold its words), from the index's vocabulary."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    db.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, messages_fts, 'row')")
    total = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    terms = db.execute("SELECT term, doc FROM temp.vocab WHERE term GLOB '[a-z]*' ORDER BY doc DESC").fetchall()
    common, common_n = terms[0]
    rare = [t for t in terms if 5 <= t[1] <= 20]
    mid = [t for t in terms if total * 0.01 <= t[1] <= total * 0.05]
    rare_word, rare_n = rng.choice(rare)
    (w1, _), (w2, _) = rng.sample(mid, 2)
    both = db.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", (f'"{w1}" "{w2}"',)).fetchone()
    phrase, phrase_n = "", 0
    while phrase_n < 3:  # two adjacent words of some message that hold no function word
        body = db.execute("SELECT body FROM messages WHERE id = ?", (rng.randint(1, total),)).fetchone()[0].split()
        k = rng.randrange(len(body) - 1)
        if body[k] in FUNCTION_WORDS or body[k + 1] in FUNCTION_WORDS or not (body[k] + body[k + 1]).isalpha():
            continue
        phrase = f'"{body[k]} {body[k + 1]}"'
        phrase_n = db.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", (phrase,)).fetchone()[0]
    db.close()
    return {
        "rare word": (rare_word, rare_n),
        "common word": (common, common_n),
        "two words": (f"{w1} {w2}", both[0]),
        "phrase": (phrase, phrase_n),
    }


# The floor: the daemon's SQL for a search page, run by sqlite3 in a plain process; prints ns per query.
FLOOR = r"""
import json, sqlite3, sys, time
path, sql, params, n = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
out = []
for i in range(n + n // 10):  # the first tenth warms up
    t0 = time.perf_counter_ns()
    db.execute(sql, params).fetchall()
    out.append(time.perf_counter_ns() - t0)
print(json.dumps(out[n // 10:]))
"""


def floor(db_path: str, text: str, filters: dict, n: int) -> dict:
    from coordd.fts import match_expression
    from coordd.reads import search_sql

    where = [f"m.{column} = ?" for column in filters]
    params = [match_expression(text), *filters.values(), PAGE + 1]  # + 1: as the daemon asks, to know if more
    cmd = [sys.executable, "-c", FLOOR, db_path, search_sql(where, 0), json.dumps(params), str(n)]
    return bench.stats_us(json.loads(subprocess.run(cmd, capture_output=True, check=True, text=True).stdout))


def through_client(c, text: str, filters: dict, n: int) -> dict:
    for _ in range(n // 10):
        c.history(search=text, limit=PAGE, **filters)
    out = [0] * n
    for i in range(n):
        t0 = pc()
        c.history(search=text, limit=PAGE, **filters)
        out[i] = pc() - t0
    return bench.stats_us(out)


def migration_s(db_path: str) -> float:
    """Seconds schema 6's migration takes to index a copy of the database (its index dropped: a schema 5 store)."""
    from coordd import schema

    tmp = tempfile.mkdtemp(prefix="coordd-search-", dir=bench.WORK_DIR)
    try:
        copy = os.path.join(tmp, "copy.db")
        src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        dst = sqlite3.connect(copy, isolation_level=None)
        src.backup(dst)
        src.close()
        dst.execute("DROP TABLE messages_fts")
        dst.execute("PRAGMA user_version = 5")
        t0 = pc()
        schema.migrate(dst, copy)
        took = (pc() - t0) / 1e9
        dst.close()
        return took
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(cfg) -> list[dict]:
    from coordctl import Client

    rows = []
    msgs = messages(cfg.messages)
    extra = f"[retention]\nmax_messages = {cfg.messages * 2}\n[queue]\nmax_per_agent = {cfg.messages}\n"
    extra += f"max_total = {cfg.messages}\n"
    with bench.daemon(extra_config=extra) as d, Client(d.socket, timeout=60) as c:
        filled = fill(c, msgs)
        rows.append(
            bench.row(
                f"fill: {cfg.messages:,} messages by batch, all delivered",
                cfg.messages / filled,
                "msgs/s",
                note=f"{filled:.1f} s; batches of 1,000, inbox deliveries included",
            )
        )
        db_path = str(d.tmp / "state" / "coordd.db")
        queries = pick_queries(db_path, random.Random(5))
        kinds = [(kind, text, n, {}) for kind, (text, n) in queries.items()]
        common, common_n = queries["common word"]
        kinds.append(("common word, one agent's", common, common_n // 8, {"agent": bench.AGENTS[2]}))
        for _, text, _, filters in kinds:  # settle: the fill's last bookkeeping and checkpoint, a warm cache
            through_client(c, text, filters, cfg.queries // 10)
        for kind, text, matches, filters in kinds:
            print(f"bench_search: {kind} {text!r} ...", file=sys.stderr, flush=True)
            st, fl = through_client(c, text, filters, cfg.queries), floor(db_path, text, filters, cfg.queries)
            note = f"{text}: about {matches:,} matches; {cfg.queries} queries, pages of {PAGE}"
            for q, floor_name in (("p50", "sqlite3, same query, plain process"), ("p99", "sqlite3 p99")):
                ms, floor_ms = st[q] / 1000, fl[q] / 1000
                rows.append(
                    bench.row(
                        f"search, {kind} ({q})",
                        ms,
                        "ms",
                        floor_name,
                        floor_ms,
                        ms / floor_ms,
                        f"< {TARGET_MS:g} ms",
                        ms < TARGET_MS,
                        note=note if q == "p50" else None,
                        stats=st,
                        floor_stats=fl,
                        search=text,
                        filters=filters,
                    )
                )
    took = migration_s(db_path) if Path(db_path).exists() else None
    rows.append(bench.row(f"upgrade: schema 6 indexes {cfg.messages:,} stored messages", took, "s", note="once"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10,000 messages, fewer queries: a smoke check")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_search.json"))
    args = ap.parse_args()
    cfg = argparse.Namespace(messages=10_000 if args.quick else 100_000, queries=50 if args.quick else 300)
    info = {**bench.machine(), "quick": args.quick, "config": vars(cfg)}
    rows = run(cfg)
    lines = bench.table(rows, info).split("\n")
    lines[0] = (
        f"coordd bench_search{' --quick' if args.quick else ''}: {info['nproc']} CPUs ({info['cpu']}), "
        f"Python {info['python']}, SQLite {info['sqlite']}, {info['date']}."
    )
    print("\n".join(lines), flush=True)
    bench.save(args.out, info, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
