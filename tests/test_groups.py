"""Sending to a group ("@NAME"): one member gets each message, as the group's pick says; the choice is recorded."""

from __future__ import annotations

import shutil
import threading
from collections import Counter

import pytest
from conftest import cancel_between_attempts, wait_until, write_config
from test_cli import ok
from test_watch import Collector
from tmux_fixtures import TmuxServer, records

from coordctl import CoordError
from coordctl.events import event_line
from coordd import config
from coordd.model import ConfigError


@pytest.fixture
def tmux_server():
    servers: list[TmuxServer] = []

    def make() -> TmuxServer:
        servers.append(TmuxServer())
        return servers[-1]

    yield make
    for s in servers:
        s.kill()
        shutil.rmtree(s.dir, ignore_errors=True)


def member(agent_id: str, *groups: str) -> dict:
    return {"id": agent_id, "groups": list(groups)}


def recipients(c, ids: list[int]) -> list[str]:
    return [c.get(i).message.to for i in ids]


def healthy(c, agent: str) -> bool:
    return next(a for a in c.agents() if a.id == agent).healthy


class Acker(threading.Thread):
    """An agent that fetches and acknowledges its messages as they come, on its own connection."""

    def __init__(self, d, agent: str) -> None:
        super().__init__(daemon=True)
        self.client, self.agent = d.client(), agent
        self.done = threading.Event()
        # (A set: under concurrent inbox requests the daemon may return a message it just marked read once more.)
        self.acked: set[int] = set()
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            with self.client as c:
                while not self.done.is_set():
                    self.acked.update(m.id for m in c.inbox(self.agent, wait=0.2, ack=True, limit=1000))
        except BaseException as e:
            self.error = e

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def test_least_loaded_favours_members_that_ack_and_never_picks_a_down_one(make_daemon, tmux_server):
    server = tmux_server()
    server.session("shell", "sh")  # the pane runs a shell, not its agent: a delivery finds the transport down
    down = {"id": "D", "transport": "tmux", "target": "shell:0.0", **server.agent_keys(), "groups": ["w", "solo"]}
    d = make_daemon(
        agents=[member("A", "w"), member("B", "w"), member("C", "w"), down],
        groups={"w": {"pick": "least-loaded"}, "solo": {"pick": "least-loaded"}},
        delivery={"unhealthy_recheck_ms": 50},
    )
    with d.client() as c:
        waiting = c.send("D", "for the agent that is not running")  # D's load is 1: the least, were it up
        wait_until(lambda: not healthy(c, "D"), what="D's transport to report down")
        ackers = [Acker(d, "A"), Acker(d, "B")]  # C acknowledges nothing
        try:
            ids = [c.send("@w", f"job {i}") for i in range(300)]
            got = Counter(recipients(c, ids))
            wait_until(
                lambda: [len(a.acked) for a in ackers] == [got["A"], got["B"]],
                what=f"A and B to ack theirs ({got}; acked {[(len(a.acked), a.error) for a in ackers]})",
            )
        finally:
            for a in ackers:
                a.stop()
        assert got["D"] == 0, got  # down: never picked while A, B and C are up
        assert got["A"] + got["B"] >= 250 and got["A"] >= 100 and got["B"] >= 100, got
        assert 0 < got["C"] < 50, got  # picked only while its backlog was no longer than theirs (round-robin: 100)
        assert all(c.get(i).message.group == "@w" for i in ids)

        # Every member down: the message is still accepted, and waits in a down member's queue.
        alone = c.get(c.send("@solo", "only D is in solo")).message
        assert (alone.to, alone.group) == ("D", "@solo")
        assert {c.get(i).message.status for i in (alone.id, waiting)} <= {"queued", "delivering"}  # (a probe)


def test_round_robin_cycles_the_members_in_config_order(make_daemon):
    d = make_daemon(agents=[member("A", "g"), member("Other"), member("B", "g", "h"), member("C", "g")])
    with d.client() as c:
        ids = [c.send("@g", f"m{i}") for i in range(7)]
        assert recipients(c, ids) == ["A", "B", "C", "A", "B", "C", "A"]
        mixed = c.batch([{"to": "@g", "body": "x"}, {"to": "Other", "body": "y"}, {"to": "@g", "body": "z"}])
        assert recipients(c, mixed) == ["B", "Other", "C"]
        assert [c.get(i).message.group for i in mixed] == ["@g", None, "@g"]
        assert recipients(c, [c.send("@h", "B alone is in h")]) == ["B"]

        # A send retried with its idempotency key gets the first one's id, and makes no second pick.
        first = c.send("@g", "keyed", key="job-1")
        assert c.send("@g", "keyed", key="job-1") == first
        after = c.send("@g", "after the retry")
        assert recipients(c, [first, after]) == ["A", "B"]


def test_a_reload_changes_the_members_and_the_pick(make_daemon):
    d = make_daemon(agents=[member("A", "g"), member("B", "g"), member("C")])
    with d.client() as c:
        assert recipients(c, [c.send("@g", f"m{i}") for i in range(3)]) == ["A", "B", "A"]  # nobody acks
        sections = {
            "daemon": {"socket": d.socket, "workspace": str(d.workspace)},
            "store": {"path": d.db},
            "groups": {"g": {"pick": "least-loaded"}},
        }
        write_config(d.config, {**sections}, [member("A", "g"), member("B", "g"), member("C", "g")])
        c.reload()
        # A 2, B 1, C 0: C; then B and C have 1 each, and B comes first after C; then C.
        assert recipients(c, [c.send("@g", f"n{i}") for i in range(3)]) == ["C", "B", "C"]


def test_a_batch_to_a_least_loaded_group_spreads_over_its_members(make_daemon):
    d = make_daemon(
        agents=[member("A", "w"), member("B", "w"), member("C", "w")], groups={"w": {"pick": "least-loaded"}}
    )
    with d.client() as c:
        ids = c.batch([{"to": "@w", "body": f"m{i}"} for i in range(30)])  # nobody acks: counted as picked
        assert Counter(recipients(c, ids)) == {"A": 10, "B": 10, "C": 10}


def test_least_loaded_counts_survive_a_restart_and_acks_lower_them(make_daemon):
    d = make_daemon(agents=[member("A", "w"), member("B", "w")], groups={"w": {"pick": "least-loaded"}})
    with d.client() as c:
        older = [c.send("A", f"for A {i}", wait=True) for i in range(5)]  # delivered, not acknowledged
    d.stop()
    d.start()  # A's load is seeded from the database: 5
    with d.client() as c:
        assert recipients(c, [c.send("@w", f"m{i}") for i in range(3)]) == ["B", "B", "B"]
        assert c.ack("A", older) == 5  # A: 0, B: 3
        assert recipients(c, [c.send("@w", f"n{i}") for i in range(4)]) == ["A", "A", "A", "B"]


def test_messages_retention_prunes_unacknowledged_no_longer_count(make_daemon):
    d = make_daemon(
        agents=[member("A", "w"), member("B", "w")],
        groups={"w": {"pick": "least-loaded"}},
        retention={"max_age_days": 1e-5, "prune_interval_s": 0.1},  # finished messages go after 0.864 s
    )
    with d.client() as c:
        for i in range(20):
            c.send("A", f"never acked {i}", wait=True)
        wait_until(lambda: not c.history(agent="A").messages, what="retention to prune A's messages")
        c.send("B", "B has one")
        # Were A's 20 still counted, B would be the less loaded; pruned, A has none.
        assert recipients(c, [c.send("@w", "to A")]) == ["A"]


def test_failed_and_cancelled_messages_no_longer_count(make_daemon, tmux_server):
    server = tmux_server()
    shells = [
        {"id": name, "transport": "tmux", "target": f"{name}:0.0", **server.agent_keys(), "groups": ["s"]}
        for name in ("D1", "D2")
    ]
    for shell in shells:
        server.session(shell["id"], "sh")  # a shell in the pane: its messages stay queued
    d = make_daemon(
        agents=[member("A", "w"), member("B", "w"), *shells],
        groups={"w": {"pick": "least-loaded"}, "s": {"pick": "least-loaded"}},
        delivery={"max_attempts": 1, "unhealthy_recheck_ms": 50},
        start=False,
    )
    d.inbox("A").parent.mkdir(parents=True)
    d.inbox("A").write_text("a file where the inbox directory should be: every delivery to A fails")
    d.start()
    with d.client() as c:
        failed = [c.send("A", f"fails {i}") for i in range(3)]
        wait_until(lambda: all(c.get(i).message.status == "failed" for i in failed), what="A's messages to fail")
        assert recipients(c, [c.send("@w", "first")]) == ["A"]  # A's failed ones no longer count: A 0, B 0

        held = [c.send("D1", f"held {i}") for i in range(3)]  # queued: D1 3
        assert recipients(c, [c.send("@s", "to the less loaded")]) == ["D2"]  # D2 1
        for i in held:
            wait_until(lambda i=i: cancel_between_attempts(c, i), what=f"message {i} to be cancelled")
        assert recipients(c, [c.send("@s", "D1 has none now")]) == ["D1"]  # D1 0, D2 1


def test_idle_prefers_a_member_its_transport_reports_idle(make_daemon, tmux_server, tmp_path):
    server = tmux_server()
    out = tmp_path / "t.jsonl"
    server.reader("t", out)
    pane = {"id": "T", "transport": "tmux", "target": "t:0.0", **server.agent_keys(), "groups": ["i"]}
    d = make_daemon(agents=[pane, member("A", "i")], groups={"i": {"pick": "idle"}})
    with d.client() as c:
        # Before any delivery the tmux transport cannot tell (None), and A has acked all it has: A is idle.
        assert recipients(c, [c.send("@i", "first", wait=True)]) == ["A"]  # (A: 1 unacked from now on)
        for i in range(5):
            c.send("T", f"for T {i}", wait=True)  # T: its agent in front, nothing queued: idle; load 5
        wait_until(lambda: len(records(out)) == 5, what="the reader to get T's messages")
        # Least-loaded would pick A (1 against 5); idle picks T, which has nothing waiting.
        picked = c.send("@i", "second", wait=True)
        assert recipients(c, [picked]) == ["T"]
        c.inbox("A", ack=True)  # A acks: idle again, and now the less loaded of the two idle members
        assert recipients(c, [c.send("@i", "third", wait=True)]) == ["A"]
        assert recipients(c, [c.send("@i", "fourth", wait=True)]) == ["T"]  # A has one unacked again


def test_the_group_shows_in_get_show_and_watch(make_daemon):
    d = make_daemon(agents=[member("A", "g"), member("B", "g")])
    watch = Collector(d.socket)
    try:
        with d.client() as c:
            direct = c.send("A", "direct")
            sent = int(ok(d, "send", "@g", "to whoever is next").split()[0])  # round-robin: A, the first
            info = c.get(sent).message
            assert (info.to, info.group) == ("A", "@g") and c.get(direct).message.group is None
            wait_until(lambda: c.get(sent).message.status == "delivered", what="delivery")
            assert [m.group for m in c.history(agent="A").messages] == ["@g", None]
        shown = ok(d, "show", str(sent))
        assert "group:" in shown and "@g  (its pick chose A)" in shown
        rows = ok(d, "history", "--agent", "A").splitlines()
        assert "@g -> A" in next(r for r in rows if r.startswith(str(sent))) and "@g" not in rows[-1]  # (direct)
        wait_until(lambda: any(e.id == sent and e.event == "delivered" for e in watch.events()), what="events")
    finally:
        watch.stop()
    mine = [e for e in watch.events() if e.id == sent]
    assert {e.group for e in mine} == {"@g"} and {e.event for e in mine} >= {"accepted", "delivered"}
    assert all(e.group is None for e in watch.events() if e.id == direct)
    assert f"#{sent} @g -> A" in event_line(mine[0])


def test_an_unknown_group_is_a_typed_error_and_nothing_is_stored(make_daemon):
    d = make_daemon(agents=[member("A", "g"), member("B")])
    with d.client() as c:
        for to in ("@nope", "@", "@A"):
            with pytest.raises(CoordError) as e:
                c.send(to, "hi")
            assert e.value.code == "unknown_group" and "groups: g" in e.value.message
        with pytest.raises(CoordError) as e:
            c.batch([{"to": "@g", "body": "fine"}, {"to": "@nope", "body": "not fine"}])
        assert e.value.code == "unknown_group" and e.value.message.startswith("messages[1].to: no group named 'nope'")
        with pytest.raises(CoordError) as e:
            c.broadcast("hi all", group="nope")
        assert e.value.code == "unknown_group"
        with pytest.raises(CoordError) as e:
            c.send("nobody", "hi")
        assert e.value.code == "unknown_agent"
        assert c.history().messages == []
        assert recipients(c, [c.send("@g", "still serving")]) == ["A"]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (
            {"agents": [member("A", "g")], "groups": {"g": {"pick": "random"}}},
            "`groups.g.pick` = 'random': use \"round-robin\"",
        ),
        ({"agents": [member("A", "g")], "groups": {"typo": {}}}, "`groups.typo`: no agent joins group 'typo'"),
        ({"agents": [member("A", "g")], "groups": {"g": {"pick": "idle", "size": 2}}}, "size"),
        ({"agents": [member("@A")]}, "`agents[0].id` = '@A' is not a valid agent id"),
        ({"agents": [member("A", "@g")]}, "`agents[0].groups` has invalid group name '@g': write 'g'"),
    ],
)
def test_config_errors(raw: dict, error: str):
    with pytest.raises(ConfigError) as e:
        config.parse(raw, "groups.toml")
    assert error in str(e.value)


def test_a_group_without_a_table_is_round_robin():
    cfg = config.parse({"agents": [member("A", "g", "h")], "groups": {"h": {"pick": "idle"}}}, "x.toml")
    assert cfg.groups["h"].pick == "idle" and "g" not in cfg.groups
