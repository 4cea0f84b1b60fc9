"""Nodes that forward through NATS JetStream: real nats-server processes, real coordd nodes, real inboxes."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import inbox_bodies, read_inbox_file, wait_until
from nats_harness import nats_server  # noqa: F401  (a fixture)

HEARTBEAT = 0.2  # the directory's heartbeat in these tests: nodes learn each other's agents within a few


def cluster(url: str, node: str, **keys) -> dict:
    return {"nats": url, "node": node, "heartbeat_s": HEARTBEAT, **keys}


@pytest.fixture
def two_nodes(make_daemon, nats_server, tmp_path):
    """Node A (agents A-1, A-2) and node B (B-1, B-2) on one nats-server, each knowing the other's agents."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    fast = {"unhealthy_recheck_ms": 50, "unhealthy_recheck_max_ms": 200, "backoff_initial_ms": 50}
    a = make_daemon([{"id": "A-1"}, {"id": "A-2"}], sub="a", cluster=cluster(nats_server.url, "alpha"), delivery=fast)
    b = make_daemon([{"id": "B-1"}, {"id": "B-2"}], sub="b", cluster=cluster(nats_server.url, "beta"), delivery=fast)
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
