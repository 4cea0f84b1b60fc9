"""Crash safety: clients keep sending while the daemon is SIGKILLed and restarted; nothing is lost or doubled.

8 client threads send 20,000 messages in all, as single sends and batches, each
with an idempotency key, to 4 inbox agents. Five times, at moments a seeded RNG
picks (counts of acknowledged messages, so the same run kills at the same points
of progress), the daemon is SIGKILLed and started again. A client whose call
fails because of it waits for the restart and sends the same messages again
with the same keys. At the end: every acknowledged message is in history as
delivered, in exactly one file of exactly its agent's inbox, each sender's
messages in the order it sent them; no key maps to two messages.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from conftest import Daemon, read_inbox_file, wait_until
from figures import memory_kib, record

from coordctl import Client, DaemonUnavailable, protocol

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SEED = 20261123
CLIENTS = 8
PER_CLIENT = 2_500
KILLS = 5
AGENTS = ["A", "B", "C", "D"]
RESTART_WAIT_S = 60.0


class Plan:
    """What one client sends: (seq, to) per message, grouped into single sends and batches."""

    def __init__(self, k: int) -> None:
        rng = random.Random(SEED * 100 + k)
        self.sender = f"client-{k}"
        self.steps: list[list[tuple[int, str]]] = []
        seq = 0
        while seq < PER_CLIENT:
            n = 1 if rng.random() < 0.5 else min(rng.randint(2, 40), PER_CLIENT - seq)
            self.steps.append([(seq + i, rng.choice(AGENTS)) for i in range(n)])
            seq += n

    def key(self, seq: int) -> str:
        return f"{self.sender}:{seq}"

    def body(self, seq: int) -> str:
        return f"{self.sender} #{seq:05d}\nsecond line"


class Run:
    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.up = threading.Event()  # cleared while the daemon is down on purpose
        self.up.set()
        self.lock = threading.Lock()
        self.acked = 0
        self.acks: dict[str, int] = {}  # key -> id
        self.resends = 0
        self.duplicates_found = 0
        self.errors: list[BaseException] = []

    def client(self, plan: Plan) -> None:
        try:
            with Client(self.d.socket, timeout=RESTART_WAIT_S) as c:
                for step in plan.steps:
                    ids = self._send(c, plan, step)
                    with self.lock:
                        for (seq, _), i in zip(step, ids, strict=True):
                            assert self.acks.setdefault(plan.key(seq), i) == i
                        self.acked += len(step)
        except BaseException as e:
            self.errors.append(e)

    def _send(self, c: Client, plan: Plan, step: list[tuple[int, str]]) -> list[int]:
        while True:
            try:
                if len(step) == 1:
                    [(seq, to)] = step
                    sent = c.call(protocol.Send(to=to, body=plan.body(seq), sender=plan.sender, key=plan.key(seq)))
                    if sent.duplicate:  # stored before the kill, its reply lost: the key found it
                        with self.lock:
                            self.duplicates_found += 1
                    return [sent.id]
                return c.batch(
                    [
                        {"to": to, "body": plan.body(seq), "sender": plan.sender, "key": plan.key(seq)}
                        for seq, to in step
                    ]
                )
            except DaemonUnavailable:
                # Killed under us: unacknowledged, so send the same messages again, same keys.
                with self.lock:
                    self.resends += 1
                if not self.up.wait(RESTART_WAIT_S):
                    raise

    def killer(self, thresholds: list[int], kills: list[int]) -> None:
        try:
            for t in thresholds:
                wait_until(lambda: self.acked >= t or self.errors, 120, f"{t} acknowledged messages")
                if self.errors:
                    return
                self.up.clear()
                self.d.kill()
                kills.append(self.acked)
                self.d.start()
                self.up.set()
        except BaseException as e:
            self.errors.append(e)
            self.up.set()


def parse_inbox_file(path: Path) -> dict:
    fields, body = read_inbox_file(path)
    return {"id": fields["id"], "from": fields["from"], "to": fields["to"], "body": body}


def all_history(c: Client) -> list:
    out, cursor = [], None
    while True:
        page = c.history(limit=1000, cursor=cursor)
        out += page.messages
        if page.cursor is None:
            return out
        cursor = page.cursor


def test_sigkill_five_times_under_load_loses_and_doubles_nothing(make_daemon):
    d = make_daemon(agents=[{"id": a} for a in AGENTS], retention={"inbox_max_files": 0})  # every file is counted
    plans = [Plan(k) for k in range(CLIENTS)]
    thresholds = sorted(random.Random(SEED).sample(range(1_000, CLIENTS * PER_CLIENT - 1_000), KILLS))
    run, kills = Run(d), []
    threads = [threading.Thread(target=run.client, args=(plan,)) for plan in plans]
    killer = threading.Thread(target=run.killer, args=(thresholds, kills))
    for t in [*threads, killer]:
        t.start()
    for t in [*threads, killer]:
        t.join(200)
    assert not run.errors, run.errors
    assert len(kills) == KILLS and run.acked == CLIENTS * PER_CLIENT

    total = CLIENTS * PER_CLIENT
    expected: dict[int, tuple[str, str, str, int]] = {}  # id -> (sender, to, body, seq)
    for plan in plans:
        for step in plan.steps:
            for seq, to in step:
                expected[run.acks[plan.key(seq)]] = (plan.sender, to, plan.body(seq), seq)
    assert len(expected) == total, "two keys were acknowledged with the same id"

    with d.client() as c:
        wait_until(lambda: sum(a.delivered for a in c.status().agents) == total, 90, "every message delivered")
        history = all_history(c)
    peak_rss = memory_kib(d.proc.pid, "VmHWM")
    assert len(history) == total, "history holds messages nobody acknowledged, or lost some"
    for m in history:
        sender, to, body, _ = expected[m.id]
        assert (m.status, m.to, m.sender, m.body) == ("delivered", to, sender, body), m

    # The inboxes: each acknowledged message in exactly one file, of exactly its agent, once.
    files = {a: sorted(d.inbox(a).glob("*.md")) for a in AGENTS}
    seen: Counter[str] = Counter()
    misrouted = 0
    for agent, paths in files.items():
        assert not list(d.inbox(agent).glob(".*.tmp")), f"{agent}: a half-written file was left behind"
        for path in paths:
            got = parse_inbox_file(path)
            assert path.name == f"{got['id']:012d}.md"
            sender, to, body, _ = expected[got["id"]]
            misrouted += (got["to"], agent) != (to, to)
            assert (got["from"], got["body"]) == (sender, body), path
            seen[body] += 1
    assert misrouted == 0
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    assert duplicated == 0
    lost = total - len(seen)
    assert lost == 0

    # Per agent, delivery went in id order, so each sender's messages arrived in the order it sent them.
    by_id = {m.id: m for m in history}
    for agent, paths in files.items():
        ids = [int(p.name[:12]) for p in paths]
        stamps = [by_id[i].delivered for i in ids]
        assert stamps == sorted(stamps), f"{agent}: delivered out of id order"
        per_sender: dict[str, list[int]] = defaultdict(list)
        for i in ids:
            sender, _, _, seq = expected[i]
            per_sender[sender].append(seq)
        for sender, seqs in per_sender.items():
            assert seqs == sorted(seqs), f"{agent}: {sender}'s messages out of order"

    record(
        "crash",
        sent=total,
        acknowledged=run.acked,
        lost=lost,
        duplicated=duplicated,
        misrouted=misrouted,
        kills=len(kills),
        kill_points=kills,
        resends=run.resends,
        resends_found_stored=run.duplicates_found,
        clients=CLIENTS,
        peak_rss_kib=peak_rss,
    )
