"""Replies and threads: reply_to, subject, the thread id, the reply and thread requests, their CLI."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import read_inbox_file, wait_until
from test_cli import cli, ok

from coordctl import CoordError
from coordd import schema
from coordd.config import Gui, TmuxAgent
from coordd.gui import transport as gui
from coordd.model import Record
from coordd.transports import tmux

AGENTS = [{"id": "A"}, {"id": "B"}, {"id": "C"}]
DEFAULT_HEADER = TmuxAgent(id="A", target="s:0.0").header


def tmux_render(m: Record) -> str:
    return tmux.render(DEFAULT_HEADER, m)


def gui_render(m: Record) -> str:
    return gui.render(m, Gui().header)


def delivered(c, message_id: int) -> bool:
    return c.get(message_id).message.status == "delivered"


def test_a_reply_goes_to_the_sender_in_the_roots_thread(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        root = c.send("B", "can you review #41?", sender="A", subject="review 41")
        info = c.get(root).message
        assert (info.thread, info.reply_to, info.subject) == (root, None, "review 41")  # its own thread's root

        answer = c.reply(root, "on it")  # from the original recipient, to the original sender
        got = c.get(answer).message
        assert (got.to, got.sender, got.reply_to, got.thread, got.subject) == ("A", "B", root, root, "review 41")

        again = c.reply(answer, "thanks", sender="C")  # a reply to a reply stays in the root's thread
        third = c.get(again).message
        assert (third.to, third.sender, third.reply_to, third.thread) == ("B", "C", answer, root)

        other = c.send("C", "unrelated", sender="A")
        joined = c.send("A", "late note", sender="C", reply_to=answer, subject="note")
        assert c.get(joined).message.thread == root and c.get(joined).message.subject == "note"

        thread = c.thread(again)  # from any message of it: the whole thread, in id order
        assert [m.id for m in thread] == [root, answer, again, joined]
        assert [m.id for m in c.thread(root, limit=2)] == [root, answer]
        assert [m.id for m in c.thread(other)] == [other]
        page = c.history(agent="A", limit=1).messages
        assert (page[0].id, page[0].reply_to, page[0].thread) == (joined, answer, root)

        wait_until(lambda: delivered(c, answer) and delivered(c, root), what="delivery")
    fields, body = read_inbox_file(d.inbox("A") / f"{answer:012d}.md")
    assert (fields["subject"], fields["reply_to"], fields["thread"], body) == ("review 41", root, root, "on it")
    root_fields, _ = read_inbox_file(d.inbox("B") / f"{root:012d}.md")
    assert root_fields["subject"] == "review 41" and "reply_to" not in root_fields and "thread" not in root_fields


def test_replies_and_threads_refuse_what_cannot_be(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        anonymous = c.send("A", "no sender")
        outsider = c.send("A", "from outside", sender="ci-bot")
        cases = [
            (lambda: c.reply(999, "x"), "unknown_message", "no message 999"),
            (lambda: c.reply(anonymous, "x"), "bad_state", "has no sender"),
            (lambda: c.reply(outsider, "x"), "unknown_agent", "'ci-bot'"),
            (lambda: c.send("A", "x", reply_to=999), "unknown_message", "reply_to: no message 999"),
            (lambda: c.batch([{"to": "A", "body": "x", "reply_to": 999}]), "unknown_message", "messages[0].reply_to"),
            (lambda: c.send("A", "x", subject="two\nlines"), "bad_request", "subject contains U+000A"),
            (lambda: c.send("A", "x", subject="s" * 201), "bad_request", "subject must be 1 to 200"),
            (lambda: c.send("A", "x", subject=""), "bad_request", "subject must be 1 to 200"),
            (lambda: c.thread(999), "unknown_message", "no message 999"),
            (lambda: c.thread(anonymous, limit=0), "bad_request", "limit must be 1 to"),
        ]
        for call, code, says in cases:
            with pytest.raises(CoordError) as e:
                call()
            assert e.value.code == code and says in str(e.value), (code, str(e.value))
        assert c.status().rows == 2  # nothing refused was stored, and the daemon goes on serving
        assert c.send("A", "fine", reply_to=outsider) > outsider


def test_a_store_of_schema_3_gains_threads_and_keeps_every_message(make_daemon):
    d = make_daemon(agents=[{"id": "Agent-1"}], start=False)
    d.write_old_store(
        3,
        "INSERT INTO messages (id, agent, sender, priority, body, status, created, delivered, read_at)"
        " VALUES (?, 'Agent-1', 'Agent-1', 'regular', ?, ?, 1, ?, ?)",
        [
            (1, "old read", "delivered", 2.0, 3.0),
            (2, "old failed", "failed", None, None),
            (3, "old queued", "queued", None, None),
        ],
    )
    d.start()
    with d.client() as c:
        page = c.history(limit=10).messages
        assert [(x.id, x.body, x.thread, x.reply_to) for x in page] == [
            (3, "old queued", 3, None),
            (2, "old failed", 2, None),
            (1, "old read", 1, None),
        ]
        assert c.get(1).message.read_at == 3.0
        wait_until(lambda: delivered(c, 3), what="the old queued message to be delivered")
        answer = c.reply(1, "answer to an old one")
        assert [m.id for m in c.thread(answer)] == [1, answer]
    d.stop()
    db = sqlite3.connect(d.db)
    assert db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 4
    plan = " ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN SELECT id FROM messages WHERE thread = 1 ORDER BY id"))
    assert "messages_thread" in plan


def test_cli_reply_and_thread(make_daemon):
    d = make_daemon(agents=AGENTS)
    root = int(ok(d, "send", "B", "question", "--sender", "A", "--subject", "plan B").strip())
    answer = int(ok(d, "reply", str(root), "answer").strip())
    second = int(ok(d, "reply", str(answer), "follow-up", "--sender", "C").strip())
    shown = ok(d, "thread", str(second))
    assert f"#{root}" in shown and f"#{answer}" in shown and f"re: #{answer}" in shown and "plan" in shown
    assert shown.index("question") < shown.index("answer") < shown.index("follow-up")
    as_json = json.loads(ok(d, "--json", "thread", str(root)))
    assert [(m["id"], m.get("reply_to"), m["thread"]) for m in as_json] == [
        (root, None, root),
        (answer, root, root),
        (second, answer, root),
    ]
    shown = ok(d, "show", str(answer))
    assert "subject:   plan B" in shown and f"re:        #{root}  (thread #{root})" in shown
    assert "subject:" not in ok(d, "show", str(ok(d, "send", "A", "plain").strip()))  # only when set
    refused = cli(d, "reply", "999", "x")
    assert refused.returncode != 0 and "unknown_message" in refused.stderr


@pytest.mark.parametrize("render", [tmux_render, gui_render], ids=["tmux", "gui"])
def test_headers_show_the_subject_and_what_a_message_answers(render):
    assert Gui().header == DEFAULT_HEADER  # the same default for both
    plain = Record(id=9, agent="A", body="hi", priority="urgent", created=0.0, sender="B")
    assert render(plain).split("\n")[0] == "[A2A] B -> A | URGENT"  # as before threads
    answer = Record(
        id=9, agent="A", body="hi", priority="regular", created=0.0, sender="B", reply_to=7, thread=3, subject="plan B"
    )
    assert render(answer).split("\n")[0] == "[A2A] B -> A | REGULAR | re: #7 | plan B"
    custom = "{subject}/{reply_to}/{id}"
    assert tmux.render(custom, answer).split("\n")[0] == gui.render(answer, custom).split("\n")[0] == "plan B/7/9"
    assert tmux.render(custom, plain).split("\n")[0] == "//9"


def test_a_broadcast_has_a_subject(make_daemon):
    d = make_daemon(agents=AGENTS)
    ids = [int(i) for i in ok(d, "broadcast", "freeze at 5", "--subject", "release 1.2", "--sender", "lead").split()]
    with d.client() as c:
        assert [c.get(i).message.subject for i in ids] == ["release 1.2"] * 3
        wait_until(lambda: all(delivered(c, i) for i in ids), what="the copies")
        assert c.broadcast("no subject") and c.history(limit=1).messages[0].subject is None
        with pytest.raises(CoordError) as refused:
            c.broadcast("x", subject="two\nlines")
        assert refused.value.code == "bad_request" and "subject" in refused.value.message
    header, body = read_inbox_file(sorted(d.inbox("B").iterdir())[0])
    assert header["subject"] == "release 1.2" and body == "freeze at 5"
