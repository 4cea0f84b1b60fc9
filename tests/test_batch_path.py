"""The batch path's shortcuts answer exactly as the per-message code they stand in for, and store the same.

A batch's messages are checked a field at a time over the whole chunk (validation.all_valid), and only a
chunk that fails is checked message by message (check_message) to name the first bad one. The property: the
fast check passes a chunk exactly when every message of it passes check_message, whatever the messages hold.
"""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from coordctl.protocol import NewMessage
from coordd.model import BOUNCE, Refused
from coordd.validation import MAX_KEY, MAX_NAME, MAX_SUBJECT, MAX_TAGS, all_valid, check_message

AGENTS = {"A": None, "B": None}
GROUPS = {"team": ["A", "B"]}
# Any text, near the limits too, with the characters the checks look for: controls, line breaks, white space.
CHARS = st.sampled_from(["a", "Z", "é", " ", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\u2028", "\x9f", "漢"])
ANY_TEXT = st.one_of(
    st.text(CHARS, max_size=4), *(st.text(st.just("a"), min_size=n - 1, max_size=n + 1) for n in (64, 200, 256))
)
NAME = st.text(st.sampled_from("abZ-é"), min_size=1, max_size=MAX_NAME)
good_messages = st.builds(
    NewMessage,
    to=st.sampled_from(["A", "B", "@team"]),
    body=st.text(st.sampled_from("ab \t\n"), max_size=5).map(lambda b: b + "x"),
    sender=st.none() | NAME,
    kind=st.none() | NAME,
    tags=st.lists(NAME, max_size=MAX_TAGS).map(tuple),
    key=st.none() | st.text(st.just("k"), min_size=1, max_size=MAX_KEY),
    subject=st.none() | st.text(st.just("s"), min_size=1, max_size=MAX_SUBJECT),
)
# Half the messages keep their good values; the others get one field set to anything (mostly something refused).
SPOILERS = {
    "to": st.sampled_from(["C", "@nope", "@", "a"]),
    "body": ANY_TEXT,
    "sender": ANY_TEXT,
    "kind": st.just(BOUNCE) | ANY_TEXT,
    "key": ANY_TEXT,
    "subject": ANY_TEXT,
    "tags": st.lists(ANY_TEXT, max_size=MAX_TAGS + 1).map(tuple),
}
messages = st.one_of(
    good_messages,
    st.sampled_from(sorted(SPOILERS)).flatmap(
        lambda field: st.tuples(good_messages, SPOILERS[field]).map(lambda mv: replace(mv[0], **{field: mv[1]}))
    ),
)


def passes(m: NewMessage, control_chars: str) -> bool:
    try:
        check_message(m, AGENTS, control_chars, "", GROUPS)
    except Refused:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, min_size=1, max_size=4), st.sampled_from(["allow", "reject"]))
def test_the_chunk_check_passes_exactly_what_each_message_check_passes(msgs, control_chars):
    expected = all(passes(m, control_chars) for m in msgs)
    assert all_valid(msgs, AGENTS, control_chars, GROUPS) is expected


def test_what_a_message_leaves_empty_is_stored_as_null(daemon):
    """The rows bind '' and 0 for the empty columns (no None: see schema.INSERT_MESSAGE); they are stored NULL,
    and a message that sets them keeps their values."""
    columns = "sender, kind, tags, key, reply_to, subject, grp, resent_from"
    with daemon.client() as c:
        first = c.send("Agent-1", "nothing but a body")
        plain, full = c.batch(
            [
                {"to": "Agent-2", "body": "plain"},
                {
                    "to": "Agent-3",
                    "body": "everything",
                    "sender": "Agent-1",
                    "kind": "note",
                    "tags": ["a", "b"],
                    "key": "k1",
                    "reply_to": first,
                    "subject": "s",
                },
            ]
        )
        copy = c.resend(full)
    db = sqlite3.connect(daemon.db)
    stored = {i: db.execute(f"SELECT {columns} FROM messages WHERE id = ?", (i,)).fetchone() for i in (first, plain)}
    assert stored == {first: (None,) * 8, plain: (None,) * 8}
    assert db.execute(f"SELECT {columns} FROM messages WHERE id = ?", (full,)).fetchone() == (
        "Agent-1",
        "note",
        '["a","b"]',
        "k1",
        first,
        "s",
        None,
        None,
    )
    assert db.execute("SELECT key, resent_from FROM messages WHERE id = ?", (copy,)).fetchone() == (None, full)
