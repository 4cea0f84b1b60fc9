"""Full-text search: history(search=...) over subject and body, ranked; kept in step by the writer and retention."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import wait_until
from test_cli import cli, ok

from coordctl import CoordError
from coordd import fts, schema

AGENTS = [{"id": "A"}, {"id": "B"}, {"id": "C"}]


def found(c, text: str, **filters) -> list[int]:
    return [m.id for m in c.history(search=text, limit=200, **filters).messages]


def test_search_finds_words_in_subject_and_body_and_nothing_else(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        subj = c.send("A", "see the attachment", subject="Deploy of the payments service")
        body = c.send("B", "the payments deploy failed on staging: rollback done")
        other = c.send("C", "lunch at noon?", subject="food")
        key = c.batch([{"to": "A", "body": "Café crème with naïve résumé", "sender": "B"}])[0]
        assert sorted(found(c, "payments")) == [subj, body]
        assert found(c, "rollback") == [body]
        assert found(c, "lunch") == [other]
        assert found(c, "PAYMENTS DEPLOY") == found(c, "payments deploy")  # case does not matter
        assert found(c, "deploying") == [] and sorted(found(c, "deploy*")) == [subj, body]  # endings: a prefix
        assert found(c, "cafe resume") == [key]  # nor accents
        assert found(c, "pay*") and sorted(found(c, "pay*")) == [subj, body]  # a prefix
        assert found(c, '"deploy failed"') == [body]  # a phrase: those words, in that order
        assert found(c, '"failed deploy"') == []
        assert found(c, "payments lunch") == []  # every word must match
        assert found(c, "payment-service") == []  # punctuation splits words: "payment service" as a phrase
        assert found(c, "attachment staging") == []  # in one message, not across two
        assert found(c, "nowhere") == []
        assert found(c, "the") and other not in found(c, "the")


def test_better_matches_come_first_and_filters_combine(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        weak = c.send("A", "a long note that mentions flaky once among many other words about other things", sender="B")
        strong = c.send("A", "flaky flaky test", sender="C")
        titled = c.send("B", "see subject", subject="flaky test", sender="C")
        newer_weak = c.send("C", "a long note that mentions flaky once among many other words about other things")
        ranked = found(c, "flaky")
        assert ranked.index(strong) < ranked.index(weak)  # more of the word in less text
        assert ranked.index(titled) < ranked.index(weak)  # the subject counts double
        assert ranked.index(newer_weak) < ranked.index(weak)  # a tie: newest first
        assert found(c, "flaky", agent="A") == [strong, weak]
        assert found(c, "flaky", sender="C") == [strong, titled]
        assert found(c, "flaky", agent="A", sender="B") == [weak]
        assert found(c, "flaky", contains="once") == [newer_weak, weak]
        since = c.get(titled).message.created
        assert sorted(found(c, "flaky", since=since)) == [titled, newer_weak]
        wait_until(lambda: c.status().queued == 0, what="deliveries")
        assert sorted(found(c, "flaky", status="delivered")) == sorted(ranked)
        assert found(c, "flaky", status="failed") == []


def test_search_pages_follow_the_ranking(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        c.batch([{"to": "A", "body": "word " * (n + 1) + "filler " * 20} for n in range(25)])
        c.send("A", "nothing to see")
        everything = found(c, "word")
        assert len(everything) == 25
        pages, cursor = [], None
        while True:
            page = c.history(search="word", limit=10, cursor=cursor)
            pages.append([m.id for m in page.messages])
            if page.cursor is None:
                break
            cursor = page.cursor
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [i for p in pages for i in p] == everything
        with pytest.raises(CoordError) as e:
            c.history(search="word", cursor=-1)
        assert e.value.code == "bad_request" and "cursor" in e.value.message


def test_a_search_ranks_its_newest_matches(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        best_but_old = c.send("A", "common common common")
        c.batch([{"to": "B", "body": f"common word number {i} among others"} for i in range(fts.RANKED)])
        best_and_new = c.send("C", "common common")
        page = c.history(search="common", limit=1000)
        assert len(page.messages) == fts.RANKED and page.cursor is None
        assert page.messages[0].id == best_and_new and best_but_old not in [m.id for m in page.messages]
        assert found(c, "common", agent="A") == [best_but_old]  # the newest that pass the filters
        assert found(c, "common", until=c.get(best_but_old + 1).message.created) == [best_but_old]


@pytest.mark.parametrize(
    "text",
    ['"', "NOT", "AND OR", "a OR", "(", "x:y", "NEAR(a b", "^start", "col: word", '"unclosed', "a*b*", "-x", "*"],
)
def test_fts_syntax_in_user_text_is_taken_as_words(make_daemon, text):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        hit = c.send("A", f"text with {text} inside")
        if any(ch.isalnum() for ch in text):
            assert hit in found(c, text)
        else:
            with pytest.raises(CoordError) as e:
                c.history(search=text)
            assert e.value.code == "bad_request" and "word" in e.value.message
        assert c.ping() is not None  # the daemon keeps serving


def test_search_without_words_is_a_typed_error(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        for text in ["", "   ", '""', "-- !!", "*"]:
            with pytest.raises(CoordError) as e:
                c.history(search=text)
            assert e.value.code == "bad_request" and "give words" in e.value.message, text
        c.send("A", "still here")
        assert len(found(c, "still")) == 1


def test_the_match_expression_quotes_every_part():
    assert fts.match_expression('deploy "rolled back" pay* x"y') == '"deploy" "rolled back" "pay"* "x" "y"'
    assert fts.match_expression('say "hi"* there') == '"say" "hi"* "there"'
    assert fts.match_expression('a""b') == '"a" "b"'
    assert fts.match_expression("-- !!") is None
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    for text in ['a "b', "NOT a", "a AND", "x:y", "NEAR(a", "a + b", "{a b}: c", "a*b*c", "^a", '"a"*"b"']:
        expression = fts.match_expression(text)
        assert expression is not None
        db.execute("SELECT * FROM t WHERE t MATCH ?", (expression,)).fetchall()  # no syntax error


def test_retention_removes_messages_from_the_index(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], retention={"max_messages": 100, "prune_interval_s": 60, "prune_chunk": 7})
    with d.client() as c:
        old = c.batch([{"to": "A", "body": f"ancient scroll {i}"} for i in range(60)])
        wait_until(lambda: c.status().queued == 0, what="deliveries")
        assert len(found(c, "ancient")) == 60
        new = c.batch([{"to": "A", "body": f"fresh paper {i}"} for i in range(60)])
        wait_until(lambda: c.status().queued == 0, what="deliveries")
        c.send("A", "one more, to trigger a pass", wait=True)
        wait_until(lambda: c.status().rows <= 100, what="pruning down to max_messages")
        kept = {m.id for m in c.history(limit=1000).messages}
        assert set(found(c, "ancient")) == kept & set(old) and len(kept & set(old)) < 60
        assert min(found(c, "scroll")) > old[0]  # the oldest went first
        assert set(found(c, "paper")) == set(new)
    d.stop()
    db = sqlite3.connect(d.db)  # the index holds exactly the rows left
    db.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)")
    assert db.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'scroll'").fetchone()[0] == len(
        kept & set(old)
    )


def test_the_index_survives_a_restart_and_a_kill(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        before = c.send("A", "persistent zebra")
        large = c.batch([{"to": "B", "body": f"zebra herd {i}"} for i in range(3000)])  # stored in chunks
    d.stop()
    d.start()
    with d.client() as c:
        assert found(c, "persistent") == [before]
        assert found(c, '"herd 1234"') == [large[1234]]
        after = c.send("C", "zebra after restart")
        assert found(c, "restart") == [after]
    d.kill()
    d.start()
    with d.client() as c:
        assert found(c, "restart") == [after]
        assert found(c, '"herd 2999"') == [large[-1]]
    d.stop()
    db = sqlite3.connect(d.db)
    db.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)")
    assert db.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'zebra'").fetchone()[0] == 3002


def test_a_stop_indexes_the_messages_still_waiting_for_their_index_write(make_daemon):
    """New messages are indexed in one write a little after they are stored (store.INDEX_DELAY_S); a stop
    that comes first writes it, so the next start has nothing to catch up."""
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        for i in range(5):
            c.send("A", f"quiet lynx {i}")
    d.stop()
    db = sqlite3.connect(d.db)
    assert db.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'lynx'").fetchone()[0] == 5
    db.close()
    d.start()
    d.stop()
    assert "for search that the last run had not" not in d.logtext()


def test_messages_a_crash_left_unindexed_are_indexed_at_start(make_daemon):
    """A send is indexed in the writer's deferred commit, after its acknowledgement: a crash in between leaves
    it stored but unindexed (here: rows written behind the index's back), and the next start indexes it."""
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        kept = c.send("A", "indexed okapi")
        gone = c.send("A", "stale okapi")
        wait_until(lambda: c.status().queued == 0, what="deliveries")
    d.stop()
    db = sqlite3.connect(d.db)
    db.execute(
        "INSERT INTO messages (id, agent, priority, body, status, created, thread) VALUES (?, 'B', 'regular', ?,"
        " 'delivered', 1, ?)",
        (gone + 1, "unindexed okapi", gone + 1),
    )
    db.commit()
    d.start()
    with d.client() as c:
        assert found(c, "okapi") == [gone + 1, gone, kept]
    d.stop()
    db.execute("DELETE FROM messages WHERE id = ?", (gone,))  # its index entry stays: more entries than rows
    db.commit()
    d.start()
    with d.client() as c:
        assert found(c, "okapi") == [gone + 1, kept] and found(c, "stale") == []
    d.stop()
    db.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)")
    assert "indexed 1 messages for search" in d.logtext()


def test_a_store_of_schema_5_gets_its_messages_indexed(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], start=False)
    d.write_old_store(
        5,
        "INSERT INTO messages (id, agent, sender, priority, body, status, created, thread, subject)"
        " VALUES (?, 'A', 'A', 'regular', ?, ?, 1, ?, ?)",
        [
            (1, "old delivered walrus", "delivered", 1, None),
            (2, "old failed", "failed", 2, "walrus subject"),
            (3, "old queued", "queued", 3, None),
        ],
    )
    d.start()
    with d.client() as c:
        assert sorted(found(c, "walrus")) == [1, 2]
        assert found(c, "queued") == [3]
        new = c.send("A", "a new walrus")
        assert sorted(found(c, "walrus")) == [1, 2, new]
    d.stop()
    db = sqlite3.connect(d.db)
    assert db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 4
    db.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)")


def test_cli_history_search_prints_matches_terminal_safe(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        hit = c.send("A", "evil \x1b]0;pwned\x07 payload and more", subject="alert")
        c.send("B", "unrelated")
    shown = ok(d, "history", "--search", "payload")
    assert str(hit) in shown and "unrelated" not in shown
    assert "\x1b" not in shown and "\x07" not in shown
    assert ok(d, "--json", "history", "--search", "alert").count(f'"id":{hit}') == 1
    refused = cli(d, "history", "--search", "!!")
    assert refused.returncode != 0 and "bad_request" in refused.stderr
    refused = cli(d, "history", "--search", "x", "--follow")
    assert refused.returncode != 0 and "--search" in refused.stderr
