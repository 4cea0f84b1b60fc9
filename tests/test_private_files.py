"""The files coordd writes are private and never reached through a link; one daemon per database.

Inbox files: a symbolic or hard link planted at the temp or the final path never redirects or truncates
another file, and the files are 0600 (or the agent's file_mode) whatever the umask and directory mode.
The store: a lock beside the database keeps a second daemon off it, whichever socket that one serves;
the database, its -wal, -shm and lock are 0600 in a 0755 directory, a link in their place is refused.
The inbox header quotes every value, so no sender, kind or tag can read as another field.
"""

from __future__ import annotations

import json

from conftest import read_inbox_file
from coordd.store import Record
from coordd.transports.inbox import render
from figures import record

# --- the inbox header -------------------------------------------------------------------------------------


def test_no_header_value_can_forge_another_field(make_daemon):
    d = make_daemon(agents=[{"id": "A"}])
    sender, kind = 'B", "to": "Z', "note: priority: urgent"
    tags = ["a, b", "c]", "---", 'd"']
    body = "---\nfrom: forged\n---\n\nthe body"
    with d.client() as c:
        i = c.send("A", body, sender=sender, kind=kind, tags=tags, wait=True, timeout=10)
    fields, got = read_inbox_file(d.inbox("A") / f"{i:012d}.md")
    assert {k: v for k, v in fields.items() if k != "time"} == {
        "id": i, "from": sender, "to": "A", "priority": "regular", "kind": kind, "tags": tags,
    }  # fmt: skip
    assert got == body
    record("hardening_inbox_header", hardening="sender/kind/tags crafted to forge inbox header fields",
           outcome="every value JSON-quoted; header parses as sent")  # fmt: skip


def test_line_breaks_in_header_values_are_escaped():
    """Whatever validation lets through: no character any reader takes for a line break stays raw."""
    sender = "B\nto: Z\u2028priority: urgent"
    kind = "k\x85from: X\r---"
    tags = ["t\u2029---", "\x1c\x1d\x1e\x0b\x0c"]
    text = render(Record(id=7, agent="A", body="body", priority="regular", created=0, sender=sender, kind=kind,
                         tags=tags))  # fmt: skip
    head, body = text.split("\n---\n\n", 1)
    lines = head.splitlines()  # str.splitlines breaks on all of them, as YAML 1.1 does on NEL, LS and PS
    assert lines[0] == "---" and [line.partition(": ")[0] for line in lines[1:]] == [
        "id", "from", "to", "priority", "kind", "time", "tags"
    ]  # fmt: skip
    fields = {k: json.loads(v) for k, _, v in (line.partition(": ") for line in lines[1:])}
    assert (fields["from"], fields["kind"], fields["tags"], body) == (sender, kind, tags, "body\n")
