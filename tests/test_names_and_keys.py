"""Names are one line; a broadcast's idempotency keys cannot collide with a send's.

Senders, kinds, tags, keys and agent ids refuse every line break (U+2028, U+2029, NEL, VT, FF,
FS/GS/RS as well as LF and CR) like any other control character. A broadcast keyed `standup`
stores each copy under a key no send can use, so `send --key standup:Agent-1` does not swallow
Agent-1's copy.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import inbox_bodies, wait_until
from figures import record

from coordctl import CoordError
from coordd import schema

LINE_BREAKS = {
    "\u2028": "U+2028 LINE SEPARATOR",
    "\u2029": "U+2029 PARAGRAPH SEPARATOR",
    "\x85": "U+0085 NEXT LINE",
    "\x0b": "U+000B LINE TABULATION",
    "\x0c": "U+000C FORM FEED",
    "\x1c": "U+001C FILE SEPARATOR",
    "\x1d": "U+001D GROUP SEPARATOR",
    "\x1e": "U+001E RECORD SEPARATOR",
}


@pytest.mark.parametrize("field", ["sender", "kind", "tags", "key"])
def test_line_breaks_are_refused_in_names_and_keys(daemon, field):
    with daemon.client() as c:
        for char, name in LINE_BREAKS.items():
            value = f"Agent-2{char}to: Agent-4"
            with pytest.raises(CoordError) as e:
                c.send("Agent-1", "hi", **{field: [value] if field == "tags" else value})
            assert e.value.code == "bad_request"
            assert f"{field} contains {name}" in e.value.message and "single line" in e.value.message
            with pytest.raises(CoordError) as e:  # a batch and a broadcast are checked alike
                bad = {"to": "Agent-2", "body": "hi", field: [value] if field == "tags" else value}
                c.batch([{"to": "Agent-1", "body": "ok"}, bad])
            assert f"messages[1].{field} contains {name}" in e.value.message
            if field != "tags":
                with pytest.raises(CoordError) as e:
                    c.broadcast("hi", **{field: value})
                assert f"{field} contains {name}" in e.value.message
        assert c.status().rows == 0  # nothing refused was stored
        c.send("Agent-1", "plain names still work", sender="Agent-2", kind="task", tags=["a b"], key="k-1", wait=True)
    record(
        "hardening_name_line_breaks",
        hardening="U+2028/2029, NEL, VT/FF, FS/GS/RS in names, keys",
        outcome="bad_request naming the field and the character",
    )


@pytest.mark.parametrize(
    "agent, key",
    [
        ("id = " + json.dumps("Agent-1\n"), "agents[0].id"),  # a JSON string is a TOML basic string
        ("id = " + json.dumps("Agent-1\u2028", ensure_ascii=False), "agents[0].id"),
        ("id = 'A'\ngroups = [" + json.dumps("team\n") + "]", "agents[0].groups"),
    ],
)
def test_line_breaks_are_refused_in_agent_ids_and_groups(make_daemon, agent, key):
    d = make_daemon(start=False)
    d.config.write_text(d.config.read_text().split("[[agents]]")[0] + "[[agents]]\n" + agent + "\n")
    d.start(expect_ready=False)
    assert d.proc.wait(20) != 0
    assert key in d.logtext(), d.logtext()


def test_a_send_key_cannot_swallow_a_broadcast_copy(daemon):
    with daemon.client() as c:
        x = c.send("Agent-1", "X: sent with key standup:Agent-1", key="standup:Agent-1")
        ids = c.broadcast("Y: the broadcast keyed standup", key="standup")
        assert x not in ids and len(set(ids)) == 4
        assert c.broadcast("Y: the broadcast keyed standup", key="standup") == ids  # a retry is still idempotent
        assert c.send("Agent-1", "X: sent with key standup:Agent-1", key="standup:Agent-1") == x
        copy = c.get(ids[0]).message
        assert copy.to == "Agent-1" and copy.key == "standup\x1fAgent-1"
        with pytest.raises(CoordError) as e:  # the separator is a control character: no send can forge a copy's key
            c.send("Agent-1", "forged", key="standup\x1fAgent-1")
        assert e.value.code == "bad_request" and "U+001F" in e.value.message
        wait_until(lambda: c.status().queued == 0, what="deliveries")
    bodies = ["X: sent with key standup:Agent-1", "Y: the broadcast keyed standup"]
    assert inbox_bodies(daemon.inbox("Agent-1")) == bodies
    record(
        "hardening_broadcast_key_namespace",
        hardening="send key standup:A1 vs broadcast keyed standup",
        outcome="both delivered; copies keyed in their own namespace",
    )


def test_a_broadcast_retried_across_the_upgrade_finds_its_old_copies(make_daemon):
    """A schema-1 store holds copies keyed "KEY:AGENT": retrying that broadcast after the upgrade
    stores nothing new for them, while keys used after the upgrade are in the new namespaces."""
    d = make_daemon(start=False)
    d.tmp.joinpath("state").mkdir(exist_ok=True)
    db = sqlite3.connect(d.db)
    db.executescript(schema.MIGRATIONS[0] + "PRAGMA user_version = 1;")
    old = [(1, "Agent-1", "standup:Agent-1"), (2, "Agent-2", "standup:Agent-2"), (3, "Agent-3", "daily:Agent-1")]
    db.executemany(
        "INSERT INTO messages (id, agent, priority, key, body, status, created)"
        " VALUES (?, ?, 'regular', ?, 'old', 'delivered', 0)",
        old,
    )
    db.commit()
    db.close()
    d.start()
    with d.client() as c:
        ids = c.broadcast("standup again", key="standup")
        assert ids[:2] == [1, 2] and len(set(ids[2:]) - {1, 2, 3}) == 2  # Agent-3 and Agent-4 are new copies
        daily = c.broadcast("daily", key="daily")  # "daily:Agent-1" was Agent-3's send, not Agent-1's copy
        assert 3 not in daily
        x = c.send("Agent-1", "a send after the upgrade", key="weekly:Agent-1")
        assert x not in c.broadcast("weekly", key="weekly")
