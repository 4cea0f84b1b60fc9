"""The previous release against today's daemon: its database opens with every message as it was, and its
client, speaking protocol 2 byte for byte (tests/fixtures/release_0.1.0/protocol.py, frozen), keeps working.

The fixtures were written by coordd 0.1.0 itself (tests/fixtures/release_0.1.0/make_store.py says how).
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import sqlite3
import sys
from pathlib import Path

import msgspec
from conftest import wait_until

from coordctl import Client
from coordd import schema

RELEASE = Path(__file__).parent / "fixtures" / "release_0.1.0"
AGENTS = ["Agent-1", "Agent-2", "Broken"]


def _load_protocol_0_1_0():
    spec = importlib.util.spec_from_file_location("protocol_0_1_0", RELEASE / "protocol.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # where msgspec looks up the names in its (string) annotations
    spec.loader.exec_module(module)
    return module


old = _load_protocol_0_1_0()


def test_a_store_written_by_0_1_0_opens_with_every_message_as_it_was(make_daemon):
    d = make_daemon(agents=[{"id": a, "groups": ["devs"] if a != "Broken" else []} for a in AGENTS], start=False)
    d.tmp.joinpath("state").mkdir(mode=0o700, exist_ok=True)
    db = sqlite3.connect(d.db)
    db.executescript((RELEASE / "store.sql").read_text())
    db.close()
    shown_then = json.loads((RELEASE / "messages.json").read_text())
    d.start()
    with d.client() as c:
        for then in shown_then:
            now = msgspec.to_builtins(c.get(then["message"]["id"]))
            message = then["message"]
            if message["status"] == "queued":  # its transport works now: delivered in order, below
                assert now["message"]["status"] in ("queued", "delivering", "delivered")
                message = {k: v for k, v in message.items() if k not in ("status", "attempts", "error")}
                then = {"message": message}
            # Every field 0.1.0 showed is unchanged; the new ones have their meaning for an old message.
            assert {k: now["message"].get(k) for k in message} == message
            assert now["message"]["thread"] == message["id"]
            later = {"read_at", "acked_at", "reply_to", "subject", "group", "lease_until", "resent_from"}
            assert not later & now["message"].keys()
            if "attempts" in then:
                assert now["attempts"] == then["attempts"]
        # The two that waited behind a broken inbox go out, in order, once their inbox works.
        queued = [m["message"]["id"] for m in shown_then if m["message"]["status"] == "queued"]
        wait_until(lambda: all(c.get(i).message.status == "delivered" for i in queued), what="the queued ones")
        delivered = [c.get(i).message.delivered for i in queued]
        assert delivered == sorted(delivered)
        # A broadcast retried with 0.1.0's key finds the copies 0.1.0 stored: nothing is sent twice.
        assert c.broadcast("standup in 5", group="devs", sender="coordinator", key="standup-1") == [7, 8]
        assert c.history(limit=100).messages[0].id == len(shown_then)
        thread = c.thread(c.reply(2, "seen, fixing", sender="Agent-2"))
        assert [m.id for m in thread] == [2, len(shown_then) + 1]
    d.stop()
    db = sqlite3.connect(d.db)
    assert db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION


class OldClient:
    """A client of coordd 0.1.0: its protocol module's frames, over a plain socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sock.settimeout(10)
        self.rid = 0

    def request(self, req):
        self.rid += 1
        req.rid = self.rid
        self.sock.sendall(old.frame(req))
        reply = self.read()
        assert reply.rid == self.rid
        return reply

    def read(self):
        size = int.from_bytes(self._exactly(old.HEADER_SIZE), "big")
        return old.reply_decoder.decode(self._exactly(size))  # raises if today's daemon sent what 0.1.0 can't read

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the daemon closed the connection"
            data += chunk
        return data


def test_a_client_of_0_1_0_keeps_working(make_daemon):
    d = make_daemon(agents=[{"id": "Agent-1", "groups": ["devs"]}, {"id": "Agent-2", "groups": ["devs"]}])
    c = OldClient(d.socket)
    watcher = OldClient(d.socket)
    assert isinstance(watcher.request(old.Watch()), old.Watching)
    assert c.request(old.Ping()).protocol >= 2
    sent = c.request(old.Send(to="Agent-1", body="hello from 0.1.0", sender="Agent-2", tags=["x"], key="k1"))
    assert isinstance(sent, old.Sent) and not sent.duplicate
    assert c.request(old.Send(to="Agent-1", body="hello from 0.1.0", key="k1")).duplicate
    ids = c.request(old.Batch(messages=[old.NewMessage(to="Agent-2", body=f"b{i}") for i in range(3)])).ids
    copies = c.request(old.Broadcast(body="all", group="devs", key="b1")).ids
    assert len(ids) == 3 and len(copies) == 2
    # Today's features run meanwhile: an inbox fetch and an ack make `read` and `acked` events, which a
    # 0.1.0 watcher cannot decode and must not be sent.
    with Client(d.socket) as new:
        wait_until(lambda: new.get(sent.id).message.status == "delivered", what="delivery")
        assert new.inbox("Agent-1", ack=True)[0].id == sent.id
        marker = new.send("Agent-2", "after the receipts")
    seen: list = []
    while not any(e.id == marker and e.event == "delivered" for e in seen):
        frame = watcher.read()
        assert isinstance(frame, old.Events), frame
        seen += frame.events
    assert {e.event for e in seen} == {"accepted", "delivering", "delivered"}
    shown = c.request(old.Get(message_id=sent.id))
    assert shown.message.body == "hello from 0.1.0" and shown.message.tags == ["x"]
    assert shown.message.status == "delivered" and shown.attempts[0].ok
    page = c.request(old.History(agent="Agent-2", limit=10))
    assert [m.id for m in page.messages][-3:] == list(reversed(ids))
    status = c.request(old.StatusRequest())
    assert isinstance(status, old.StatusInfo) and [a.id for a in status.agents] == ["Agent-1", "Agent-2"]
    assert [a.id for a in c.request(old.Agents()).agents] == ["Agent-1", "Agent-2"]
    assert c.request(old.Cancel(message_id=sent.id)).code == "bad_state"
    assert "coordd_messages_accepted_total" in c.request(old.Metrics()).text
    assert isinstance(c.request(old.Reload()), old.Reloaded)
    watcher.sock.sendall(old.frame(old.Unwatch(rid=9, watch=1)))
    while isinstance(frame := watcher.read(), old.Events):  # the events before the unwatch, then its reply
        assert {e.event for e in frame.events} <= {"accepted", "delivering", "delivered"}
    assert isinstance(frame, old.Unwatched) and frame.rid == 9


def test_the_bytes_docs_protocol_md_shows_are_what_coordctl_protocol_encodes():
    from coordctl import __version__
    from coordctl import protocol as p

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    examples = doc[doc.index("A `ping` with `rid` 1, as bytes on the wire") :].split("```")[1::2]
    shown = [bytes.fromhex(" ".join(re.findall(r"^((?:[0-9a-f]{2} ?)+)", block, re.M))) for block in examples]
    assert shown == [
        p.frame(p.Ping(rid=1)),
        p.frame(p.Pong(rid=1, version=__version__, protocol=p.PROTOCOL_VERSION)),
        p.frame(p.Send(rid=2, to="alice", body="hi")),
    ]
