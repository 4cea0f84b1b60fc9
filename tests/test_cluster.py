"""Nodes that forward through NATS JetStream: real nats-server processes, real coordd nodes, real inboxes."""

from __future__ import annotations

import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import inbox_bodies, read_inbox_file, wait_until
from nats_harness import nats_server  # noqa: F401  (a fixture)
from test_cli import cli
from test_core import block_inbox, unblock_inbox

HEARTBEAT = 0.2  # the directory's heartbeat in these tests: nodes learn each other's agents within a few


def cluster(url: str, node: str, **keys) -> dict:
    return {"nats": url, "node": node, "heartbeat_s": HEARTBEAT, **keys}


@pytest.fixture
def two_nodes(make_daemon, nats_server, tmp_path):
    """Node A (agents A-1, A-2) and node B (B-1, B-2) on one nats-server, each knowing the other's agents."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    keys = {
        "delivery": {"unhealthy_recheck_ms": 50, "unhealthy_recheck_max_ms": 200, "backoff_initial_ms": 50},
        "retention": {"inbox_max_files": 0},  # the fault tests count every file
    }
    alpha = [{"id": "A-1"}, {"id": "A-2", "groups": ["reviewers"]}]
    beta = [{"id": "B-1"}, {"id": "B-2", "groups": ["reviewers"]}]
    a = make_daemon(alpha, sub="a", cluster=cluster(nats_server.url, "alpha"), **keys)
    b = make_daemon(beta, sub="b", cluster=cluster(nats_server.url, "beta"), **keys)
    for node, other in ((a, "B-1"), (b, "A-1")):
        with node.client() as c:
            wait_until(lambda: other in {x.id for x in c.agents()}, 10, f"the directory to show {other}")
    return a, b


def stored(node, sql: str, *args) -> list[tuple]:
    db = sqlite3.connect(node.db)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_a_send_to_an_agent_of_another_node_is_delivered_there_once_and_shown_delivered_here(two_nodes):
    a, b = two_nodes
    with a.client() as c:
        message_id = c.send("B-1", "from alpha", sender="A-1")
        wait_until(lambda: c.get(message_id).message.status == "delivered", 10, "the delivered receipt at A")
        info = c.get(message_id).message
        assert info.forwarded is not None and info.delivered is not None
    assert inbox_bodies(b.inbox("B-1")) == ["from alpha"]
    header, _ = read_inbox_file(next(b.inbox("B-1").glob("*.md")))
    assert header["from"] == "A-1"
    [(_, origin)] = stored(b, "SELECT id, origin FROM messages")
    assert origin == f"alpha:{message_id}"
    assert not list(a.inbox("A-1").glob("*.md")) and not list(a.inbox("A-2").glob("*.md"))  # nothing misrouted


def test_a_single_node_never_imports_nats(make_daemon, tmp_path, monkeypatch):
    """Without [cluster], nats-py is never loaded: a `nats` that fails to import changes nothing."""
    fake = tmp_path / "fake" / "nats"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('a single node imported nats')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    d = make_daemon()
    with d.client() as c:
        c.send("Agent-1", "hello", wait=True)
        assert c.status().cluster is None and all(a.node is None for a in c.agents())
    assert "nats" not in d.logtext()


def test_every_node_lists_every_agent_with_its_node_and_status_shows_the_link(two_nodes):
    a, _ = two_nodes
    with a.client() as c:
        assert {x.id: x.node for x in c.agents()} == {"A-1": "alpha", "A-2": "alpha", "B-1": "beta", "B-2": "beta"}
        link = c.status().cluster
    assert link is not None and link.node == "alpha" and link.connected and link.since is not None
    assert [(n.node, n.agents, n.live) for n in link.nodes] == [("beta", 2, True)]
    assert link.backlog == 0 and link.refused == []
    out = cli(a, "agents").stdout
    assert out.split("\n")[0].split() == ["AGENT", "NODE", "TRANSPORT", "GROUPS", "HEALTH"]
    assert any(line.split()[:3] == ["B-2", "beta", "remote"] for line in out.splitlines())
    status = cli(a, "status").stdout
    assert "node alpha" in status and "connected to 127.0.0.1:" in status and "nodes beta (2)" in status


def test_an_agent_id_claimed_by_a_live_node_is_refused_by_another_and_its_messages_go_to_the_holder(
    two_nodes, make_daemon, nats_server, tmp_path
):
    a, b = two_nodes
    (tmp_path / "g").mkdir()
    g = make_daemon([{"id": "G-1"}, {"id": "B-1"}], sub="g", cluster=cluster(nats_server.url, "gamma"))
    with g.client() as c:
        wait_until(lambda: c.status().cluster.refused == ["B-1 (node beta)"], 10, "gamma to refuse B-1")
        [b1] = [x for x in c.agents() if x.id == "B-1"]
        assert b1.node == "beta" and "node beta serves it" in (b1.refused or "")
        c.send("B-1", "to the one B-1", sender="G-1", wait=True)  # delivered: beta's receipt came back
    assert inbox_bodies(b.inbox("B-1")) == ["to the one B-1"]
    assert not g.inbox("B-1").exists() or not list(g.inbox("B-1").glob("*.md"))
    assert "this node refuses its own agent" in g.logtext()
    with b.client() as c:  # the holder keeps it, and sees gamma's other agent
        wait_until(lambda: "G-1" in {x.id for x in c.agents()}, 10, "beta to see G-1")
        assert c.status().cluster.refused == []
    # a reads the directory at its heartbeat: gamma shows there within one
    wait_until(lambda: "gamma" in cli(a, "status").stdout, 10, "alpha to see gamma")
    assert g.stop(timeout=10) == 0  # a node stops at once, as a single one does


def test_messages_between_nodes_arrive_in_order_exactly_once_both_ways(two_nodes):
    a, b = two_nodes
    n = 300
    with a.client() as ca, b.client() as cb:
        ids_a = ca.batch([{"to": "B-1", "body": f"a{i}", "sender": "A-1"} for i in range(n)])
        ids_b = [cb.send("A-2", f"b{i}", sender="B-2") for i in range(50)]
        ca.send("B-1", "last", sender="A-1", wait=True)
        cb.send("A-2", "last", sender="B-2", wait=True)
        assert all(m.status == "delivered" for m in ca.history(agent="B-1", limit=1000).messages)
        assert all(ca.get(i).message.delivered for i in ids_a[:: n // 10])
        assert all(cb.get(i).message.status == "delivered" for i in ids_b)
    assert inbox_bodies(b.inbox("B-1")) == [f"a{i}" for i in range(n)] + ["last"]
    assert inbox_bodies(a.inbox("A-2")) == [f"b{i}" for i in range(50)] + ["last"]
    assert not list(a.inbox("A-1").glob("*.md")) and not list(b.inbox("B-2").glob("*.md"))


def test_a_broadcast_reaches_every_nodes_agents_and_groups_span_the_nodes(two_nodes):
    a, b = two_nodes
    with a.client() as c:
        wait_until(lambda: {x.id: x.groups for x in c.agents()}.get("B-2") == ["reviewers"], 10, "B-2's groups")
        everyone = c.broadcast("all hands", sender="A-1")
        reviewers = c.broadcast("reviewers only", group="reviewers", sender="A-1")
        picked = [c.send("@reviewers", f"review {i}", sender="A-1") for i in range(2)]  # round-robin: one each
        assert len(everyone) == 3 and len(reviewers) == 2
        for message_id in everyone + reviewers + picked:
            wait_until(lambda: c.get(message_id).message.status == "delivered", 10, f"{message_id} delivered")
    assert inbox_bodies(b.inbox("B-1")) == ["all hands"]
    assert inbox_bodies(b.inbox("B-2"))[:2] == ["all hands", "reviewers only"]
    assert inbox_bodies(a.inbox("A-2"))[:2] == ["all hands", "reviewers only"]
    assert sorted(inbox_bodies(b.inbox("B-2"))[2:] + inbox_bodies(a.inbox("A-2"))[2:]) == ["review 0", "review 1"]
    assert not list(a.inbox("A-1").glob("*.md"))  # the sender gets no copy


def test_a_copy_jetstream_did_not_drop_is_stored_and_delivered_once(two_nodes, nats_server):
    """Past the duplicate window (or on a redelivery) JetStream hands the same message over again: the receiver
    finds it by its origin and only acks it."""
    import asyncio

    import msgspec
    import nats

    from coordd.cluster.forwarding import MSG_ID, ORIGIN, Wire

    _, b = two_nodes

    async def publish(copies: list[tuple[str, str, str]]) -> set[int]:  # (Nats-Msg-Id, origin, body)
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        acks = []
        for msg_id, origin, body in copies:
            payload = msgspec.msgpack.encode(Wire(agent="B-2", body=body, priority="regular", created=0.0))
            acks.append(await js.publish("coordd.node.beta.in", payload, headers={MSG_ID: msg_id, ORIGIN: origin}))
        await nc.close()
        assert not any(ack.duplicate for ack in acks)
        return {ack.seq for ack in acks}

    copies = [("zeta:7:a", "zeta:7", "once"), ("zeta:7:b", "zeta:7", "once"), ("zeta:8", "zeta:8", "next")]
    assert len(asyncio.run(publish(copies))) == 3  # JetStream stored both copies
    # The subject's order: once the third is delivered, the second copy was taken (and only acked).
    wait_until(lambda: inbox_bodies(b.inbox("B-2"))[-1:] == ["next"], 10, "the message after the copies")
    assert inbox_bodies(b.inbox("B-2")) == ["once", "next"]
    assert stored(b, "SELECT count(*) FROM messages WHERE origin = 'zeta:7'") == [(1,)]


def test_a_message_that_failed_on_its_node_is_retried_there_by_a_retry_on_the_sender(two_nodes, nats_server):
    """A retry on the sender goes to the owning node, which requeues the message (a retry of it coming again
    changes nothing); the new outcome comes back as a receipt. Failing again there, it can be retried again."""
    import asyncio

    import nats

    from coordd.cluster.forwarding import MSG_ID, ORIGIN, RETRY

    a, b = two_nodes
    block_inbox(b, "B-1")
    with a.client() as c:
        first, second = (c.send("B-1", body, sender="A-1") for body in ("first", "second"))
        for message_id in (first, second):
            wait_until(lambda: c.get(message_id).message.status == "failed", 10, f"{message_id} failed at beta")
        c.retry(first)  # still blocked: it fails there again, and the sender hears
        wait_until(lambda: c.get(first).message.status == "failed", 10, "the retry's failed receipt")
        unblock_inbox(b, "B-1")
        c.retry(first)
        wait_until(lambda: c.get(first).message.status == "delivered", 10, "the retry's delivered receipt")
        assert c.retry_many("B-1") == 1  # the bulk form: `second`
        wait_until(lambda: c.get(second).message.status == "delivered", 10, "the bulk retry's receipt")
        assert c.get(first).message.forwarded is not None

    async def again() -> None:  # the last retry of `first` once more (a redelivery): found delivered, only acked
        nc = await nats.connect(nats_server.url)
        origin = f"alpha:{first}"
        ack = await nc.jetstream().publish(
            "coordd.node.beta.in", b"", headers={MSG_ID: f"{origin}+again", ORIGIN: origin, RETRY: "2"}
        )
        await nc.close()
        assert not ack.duplicate

    asyncio.run(again())
    with a.client() as c:
        c.send("B-1", "after", sender="A-1", wait=True)  # one subject, in order: the copy was taken before
    assert inbox_bodies(b.inbox("B-1")) == ["first", "second", "after"]
    rows = "FROM messages WHERE agent = 'B-1'"  # (beta also bounced each failure to A-1, on alpha)
    counts = f"SELECT count(*), sum(status = 'delivered'), sum(receipted & 1) {rows}"  # (stored shortly after)
    wait_until(lambda: stored(b, counts) == [(3, 3, 3)], 10, "3 delivered at beta, each receipt taken")


def test_a_retry_of_a_message_cancelled_on_its_node_fails_again_for_the_sender(two_nodes):
    """The owning node cannot retry a message cancelled there: it says so with a failed receipt (no stall)."""
    a, b = two_nodes
    with b.client() as cb:
        cb.pause("B-1")
    with a.client() as ca, b.client() as cb:
        message_id = ca.send("B-1", "held", sender="A-1")
        wait_until(lambda: stored(b, "SELECT id FROM messages WHERE agent = 'B-1'"), 10, "the message at beta")
        [(local,)] = stored(b, "SELECT id FROM messages WHERE agent = 'B-1'")
        cb.cancel(local)
        wait_until(lambda: ca.get(message_id).message.status == "failed", 10, "the cancel's failed receipt")
        ca.retry(message_id)
        wait_until(lambda: ca.get(message_id).message.status == "failed", 10, "the refused retry's failed receipt")
        assert ca.get(message_id).message.error == "cancelled on its node"
        assert ca.get(message_id).message.attempts == 2  # forwarded twice: the retry reached beta
    assert stored(b, "SELECT status FROM messages WHERE agent = 'B-1'") == [("cancelled",)]


def test_read_and_acked_receipts_come_back_to_the_sender(two_nodes):
    from test_watch import Collector

    a, b = two_nodes
    watcher = Collector(a.socket)  # `watch` at the sender shows the remote outcome and receipts
    with a.client() as ca, b.client() as cb:
        message_id = ca.send("B-1", "read me", sender="A-1", wait=True)
        assert ca.get(message_id).message.read_at is None
        [got] = cb.inbox("B-1")
        assert got.body == "read me" and got.origin == f"alpha:{message_id}"
        wait_until(lambda: ca.get(message_id).message.read_at is not None, 10, "the read receipt at alpha")
        assert ca.get(message_id).message.acked_at is None
        cb.ack("B-1", [got.id])
        wait_until(lambda: ca.get(message_id).message.acked_at is not None, 10, "the acked receipt at alpha")
    try:
        wanted = ["accepted", "delivered", "read", "acked"]
        seen = lambda: [e.event for e in watcher.events() if e.id == message_id and e.event in wanted]  # noqa: E731
        wait_until(lambda: seen() == wanted, 10, "the watch events at alpha")
    finally:
        watcher.stop()

    def send_and_wait_for_the_ack() -> int:
        with a.client() as c:
            return c.send("B-2", "ack me", sender="A-1", wait=True, wait_for="acked", timeout=20)

    with ThreadPoolExecutor(1) as pool, b.client() as cb:
        waiting = pool.submit(send_and_wait_for_the_ack)
        [got] = wait_until(lambda: cb.inbox("B-2", ack=True), 10, "the message at beta")
        assert waiting.result(20) == int(got.origin.split(":")[1])  # answered once beta's agent acked it


def connected(node) -> bool:
    with node.client() as c:
        return c.status().cluster.connected


def all_delivered_in_order(a, b, ids: list[int], bodies: list[str], timeout: float = 30) -> None:
    """B-1 got exactly `bodies`, in order (0 lost, 0 duplicated), nothing went to another agent (0 misrouted), and
    A shows each of `ids` delivered (the receipts came back)."""
    wait_until(lambda: len(list(b.inbox("B-1").glob("*.md"))) >= len(bodies), timeout, "every message at B-1")
    assert inbox_bodies(b.inbox("B-1")) == bodies
    undelivered = "SELECT count(*) FROM messages WHERE agent = 'B-1' AND status != 'delivered'"
    wait_until(lambda: stored(a, undelivered) == [(0,)], timeout, "every delivered receipt at A")
    assert [r[0] for r in stored(a, "SELECT id FROM messages WHERE agent = 'B-1' ORDER BY id")] == ids
    assert [r[0] for r in stored(b, "SELECT body FROM messages ORDER BY id")] == bodies  # stored once each
    for node, agents in ((a, ("A-1", "A-2")), (b, ("B-2",))):
        assert not any(list(node.inbox(x).glob("*.md")) for x in agents if node.inbox(x).exists())


def test_nats_unreachable_sends_are_accepted_and_forwarded_in_order_when_it_returns(two_nodes, nats_server):
    a, b = two_nodes
    nats_server.kill()
    wait_until(lambda: not connected(a), 10, "alpha to see NATS gone")
    with a.client() as c:
        ids = [c.send("B-1", f"m{i}", sender="A-1") for i in range(100)]
        with pytest.raises(Exception) as e:
            c.send("Nobody", "hello")
        assert getattr(e.value, "code", None) == "unknown_agent"
        wait_until(lambda: c.status().cluster.backlog == 100, 10, "the forward backlog")
        status = cli(a, "status").stdout
        assert "NATS unreachable since" in status and "forward backlog 100" in status
    nats_server.start()
    all_delivered_in_order(a, b, ids, [f"m{i}" for i in range(100)])
    with a.client() as c:
        assert c.status().cluster.backlog == 0


def test_sigkill_of_nats_server_mid_stream_loses_and_duplicates_nothing(two_nodes, nats_server):
    a, b = two_nodes
    n = 2000
    with a.client() as c:
        ids = c.batch([{"to": "B-1", "body": f"m{i}", "sender": "A-1"} for i in range(n)])
    wait_until(lambda: list(b.inbox("B-1").glob("*.md")), 20, "the first messages at B-1")
    nats_server.kill()
    nats_server.start()
    all_delivered_in_order(a, b, ids, [f"m{i}" for i in range(n)], timeout=60)


def test_sigkill_of_the_receiving_node_mid_stream_loses_and_duplicates_nothing(two_nodes):
    a, b = two_nodes
    n = 2000
    with a.client() as c:
        ids = c.batch([{"to": "B-1", "body": f"m{i}", "sender": "A-1"} for i in range(n)])
    wait_until(lambda: list(b.inbox("B-1").glob("*.md")), 20, "the first messages at B-1")
    b.kill()
    early = len(list(b.inbox("B-1").glob("*.md")))
    b.start()
    all_delivered_in_order(a, b, ids, [f"m{i}" for i in range(n)], timeout=60)
    assert early < n  # it was killed mid-stream


def test_receipts_owed_when_the_receiving_node_is_killed_are_sent_after_its_restart(two_nodes, nats_server):
    a, b = two_nodes
    with b.client() as c:
        c.pause("B-1")
    with a.client() as c:
        ids = [c.send("B-1", f"m{i}", sender="A-1") for i in range(20)]
    wait_until(lambda: stored(b, "SELECT count(*) FROM messages") == [(20,)], 10, "the messages stored at B")
    nats_server.kill()
    with b.client() as c:  # delivered while NATS is away: their receipts wait, in memory only
        c.resume("B-1")
    wait_until(lambda: len(list(b.inbox("B-1").glob("*.md"))) == 20, 10, "the deliveries at B")
    wait_until(lambda: stored(b, "SELECT count(*) FROM messages WHERE status = 'delivered'") == [(20,)], 10, "stored")
    b.kill()
    nats_server.start()
    b.start()
    all_delivered_in_order(a, b, ids, [f"m{i}" for i in range(20)])
    owed = "SELECT count(*) FROM messages WHERE receipted & 1 = 0"  # marked by a deferred write, shortly after
    wait_until(lambda: stored(b, owed) == [(0,)], 10, "the receipts marked sent at B")


def test_sigkill_of_the_sending_node_mid_stream_loses_and_duplicates_nothing(two_nodes):
    a, b = two_nodes
    n = 2000
    with a.client() as c:
        ids = c.batch([{"to": "B-1", "body": f"m{i}", "sender": "A-1"} for i in range(n)])
    wait_until(lambda: list(b.inbox("B-1").glob("*.md")), 20, "the first messages at B-1")
    a.kill()
    forwarded = stored(a, "SELECT count(*) FROM messages WHERE forwarded IS NOT NULL")[0][0]
    a.start()
    all_delivered_in_order(a, b, ids, [f"m{i}" for i in range(n)], timeout=60)
    assert forwarded < n  # it was killed mid-stream


def test_per_node_credentials_keep_each_node_to_its_own_subjects(make_daemon, tmp_path):
    """The permissions docs/cluster.md shows: the nodes work with them, and a node's user cannot read another's."""
    import asyncio

    import nats
    from nats_harness import NatsServer, node_permissions

    users = ", ".join(
        f'{{ user: "{node}", password: "pw-{node}", permissions: {node_permissions(node)} }}'
        for node in ("alpha", "beta")
    )
    server = NatsServer(tmp_path, config=f"authorization {{ users: [ {users} ] }}\n").start()
    try:
        for sub in ("a", "b"):
            (tmp_path / sub).mkdir()
        a = make_daemon(
            [{"id": "A-1"}], sub="a", cluster=cluster(server.url, "alpha", user="alpha", password="pw-alpha")
        )
        b = make_daemon([{"id": "B-1"}], sub="b", cluster=cluster(server.url, "beta", user="beta", password="pw-beta"))
        with a.client() as c:
            wait_until(lambda: "B-1" in {x.id for x in c.agents()}, 10, "alpha to learn B-1")
            c.send("B-1", "allowed", sender="A-1", wait=True)
        with b.client() as c:
            wait_until(lambda: "A-1" in {x.id for x in c.agents()}, 10, "beta to learn A-1")
            c.send("A-1", "allowed too", sender="B-1", wait=True)
        assert inbox_bodies(b.inbox("B-1")) == ["allowed"]

        async def alpha_tries(attempts) -> list[str | None]:  # each attempt's error, None if it worked
            nc = await nats.connect(server.url, user="alpha", password="pw-alpha", inbox_prefix="_INBOX_alpha")
            js = nc.jetstream(timeout=2)
            results: list[str | None] = []
            for attempt in attempts(nc, js):
                try:
                    await attempt
                    await nc.flush()
                    results.append(None)
                except Exception as e:
                    results.append(str(e) or type(e).__name__)
            await nc.close()
            return results

        # What alpha may do (its own consumer) works with the same connection: the refusals below are the rules'.
        own = asyncio.run(alpha_tries(lambda nc, js: [js.consumer_info("COORDD", "coordd-in-alpha")]))
        assert own == [None]
        spying = asyncio.run(
            alpha_tries(
                lambda nc, js: [
                    js.consumer_info("COORDD", "coordd-in-beta"),
                    js.pull_subscribe("coordd.node.beta.in", durable="spy", stream="COORDD"),
                    nc.subscribe("coordd.node.beta.in"),
                    nc.subscribe("_INBOX_beta.>"),
                ]
            )
        )
        assert spying[0] and spying[1], spying  # refused JetStream requests go unanswered; refused subscriptions
        # are only logged (and reported to the error callback): the server says each, as it gets to it
        for refused in (
            'Publish Violation - User "alpha", Subject "$JS.API.CONSUMER.INFO.COORDD.coordd-in-beta"',
            'Publish Violation - User "alpha", Subject "$JS.API.CONSUMER.INFO.COORDD.spy"',
            'Subscription Violation - User "alpha", Subject "coordd.node.beta.in"',
            'Subscription Violation - User "alpha", Subject "_INBOX_beta.>"',
        ):
            wait_until(lambda: refused in server.logtext(), 10, f"the server to log: {refused}")
    finally:
        server.kill()


def test_a_nats_cluster_of_three_loses_a_server_mid_stream_and_nothing_is_lost_or_duplicated(make_daemon, tmp_path):
    from nats_harness import NatsServer, free_port

    routes = [free_port() for _ in range(3)]
    servers = [NatsServer(tmp_path, f"n{i}", cluster_port=routes[i], routes=routes) for i in range(3)]
    try:
        for s in servers:
            s.proc = subprocess.Popen(s.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for s in servers:
            wait_until(s._accepts, 10, f"{s.name} to accept")
        urls = [s.url for s in servers]
        keys = {"retention": {"inbox_max_files": 0}, "delivery": {"unhealthy_recheck_max_ms": 200}}
        for sub in ("a", "b"):
            (tmp_path / sub).mkdir()
        a = make_daemon([{"id": "A-1"}], sub="a", cluster=cluster(urls, "alpha", replicas=3), **keys)
        b = make_daemon([{"id": "B-1"}], sub="b", cluster=cluster(urls, "beta", replicas=3), **keys)
        with a.client() as c:
            wait_until(lambda: "B-1" in {x.id for x in c.agents()}, 30, "alpha to learn B-1")
            server = c.status().cluster.server
        n = 2000
        with a.client() as c:
            ids = c.batch([{"to": "B-1", "body": f"m{i}", "sender": "A-1"} for i in range(n)])
        wait_until(lambda: list(b.inbox("B-1").glob("*.md")), 20, "the first messages at B-1")
        [lost] = [s for s in servers if s.url.endswith(server.rpartition(":")[2])]  # the one alpha is on
        lost.kill()
        all_delivered_in_order(a, b, ids, [f"m{i}" for i in range(n)], timeout=60)
        with a.client() as c:
            assert c.status().cluster.server != server  # it moved to another server
    finally:
        for s in servers:
            s.kill()


def test_a_node_restarted_while_nats_is_away_still_knows_the_other_nodes_agents(two_nodes, nats_server):
    a, b = two_nodes
    nats_server.kill()
    a.stop()
    a.start()
    with a.client() as c:
        assert not c.status().cluster.connected
        ids = [c.send("B-1", f"m{i}", sender="A-1") for i in range(5)]  # known from the directory it saw last
        [b1] = [x for x in c.agents() if x.id == "B-1"]
        assert b1.node == "beta"
    nats_server.start()
    all_delivered_in_order(a, b, ids, [f"m{i}" for i in range(5)])


def test_every_node_shows_an_agent_down_on_its_own_node(make_daemon, nats_server, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    a = make_daemon([{"id": "A-1"}], sub="a", cluster=cluster(nats_server.url, "alpha"))
    gone = {"id": "B-tmux", "transport": "tmux", "target": "nosuch:0.0", "socket_name": "coordd-cluster-none"}
    b = make_daemon([{"id": "B-1"}, gone], sub="b", cluster=cluster(nats_server.url, "beta"))
    with b.client() as c:
        c.send("B-tmux", "to a pane that is not there")
        wait_until(lambda: any(x.id == "B-tmux" and not x.healthy for x in c.agents()), 10, "B-tmux down at beta")
    with a.client() as c:

        def shown():
            return next((x for x in c.agents() if x.id == "B-tmux" and not x.healthy), None)

        down = wait_until(shown, 10, "alpha to show B-tmux down")
        assert down.node == "beta" and down.reason.startswith("on node beta: ")
        assert next(x for x in c.agents() if x.id == "B-1").healthy
