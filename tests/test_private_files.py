"""The files coordd writes are private and never reached through a link; one daemon per database.

Inbox files: a symbolic or hard link planted at the temp or the final path never redirects or truncates
another file, and the files are 0600 (or the agent's file_mode) whatever the umask and directory mode.
The store: a lock beside the database keeps a second daemon off it, whichever socket that one serves;
the database, its -wal, -shm and lock are 0600 in a 0755 directory, a link in their place is refused.
The inbox header quotes every value, so no sender, kind or tag can read as another field.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

import pytest

from conftest import read_inbox_file
from coordd import config
from coordd.store import Record
from coordd.transports.inbox import render
from figures import record

VICTIM_TEXT = "a file outside the inbox that coordd must never touch\n"


@contextlib.contextmanager
def umask(mask: int):
    """The umask a daemon started in the block inherits."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def plant_victim(path: Path) -> Path:
    path.write_text(VICTIM_TEXT)
    path.chmod(0o640)
    return path


def fingerprint(path: Path) -> tuple:
    """What writing, truncating or chmodding the file through a link would change."""
    st = os.lstat(path)
    return path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_ino, st.st_mtime_ns


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- inbox files ------------------------------------------------------------------------------------------


def test_links_planted_at_the_temp_and_final_paths_are_never_followed(make_daemon, tmp_path):
    d = make_daemon(agents=[{"id": "A"}])
    inbox = d.inbox("A")
    inbox.mkdir(parents=True)
    by_symlink, by_hard_link = plant_victim(tmp_path / "victim-1"), plant_victim(tmp_path / "victim-2")
    before = {v: fingerprint(v) for v in (by_symlink, by_hard_link)}
    for name in (".000000000001.md.tmp", "000000000001.md"):  # message 1: symbolic links, temp and final
        (inbox / name).symlink_to(by_symlink)
    for name in (".000000000002.md.tmp", "000000000002.md"):  # message 2: hard links, temp and final
        os.link(by_hard_link, inbox / name)
    with d.client() as c:
        ids = [c.send("A", f"message {n}", sender="B", wait=True, timeout=10) for n in (1, 2)]
        assert ids == [1, 2]
        assert [c.get(i).message.status for i in ids] == ["delivered", "delivered"]
    for v in (by_symlink, by_hard_link):
        assert fingerprint(v) == before[v], f"{v} was written, truncated or chmodded through a link"
    for n, victim in zip(ids, (by_symlink, by_hard_link)):
        path = inbox / f"{n:012d}.md"
        assert not path.is_symlink() and path.stat().st_ino != victim.stat().st_ino
        fields, body = read_inbox_file(path)
        assert (fields["id"], fields["from"], body) == (n, "B", f"message {n}")
        assert mode(path) == 0o600
    assert not list(inbox.glob(".*.tmp"))
    record("hardening_inbox_links", hardening="symlink/hard link planted at inbox temp+final path",
           outcome="link replaced, its target untouched; message arrives")  # fmt: skip


def test_inbox_files_are_0600_whatever_the_umask_and_directory_mode(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], start=False)
    d.inbox("A").mkdir(parents=True)
    d.inbox("A").chmod(0o777)
    with umask(0):
        d.start()
    with d.client() as c:
        i = c.send("A", "private", wait=True, timeout=10)
    assert mode(d.inbox("A") / f"{i:012d}.md") == 0o600
    record("hardening_inbox_mode", hardening="inbox file in a 0777 dir, daemon started with umask 0",
           outcome="file is 0600")  # fmt: skip


def test_file_mode_shares_an_inbox_with_the_group(make_daemon):
    d = make_daemon(agents=[{"id": "G", "file_mode": "0640"}], start=False)
    with umask(0o077):  # the daemon's own umask would make it 0600: file_mode wins
        d.start()
    with d.client() as c:
        i = c.send("G", "for the group", wait=True, timeout=10)
    assert mode(d.inbox("G") / f"{i:012d}.md") == 0o640


@pytest.mark.parametrize("good", ["0600", "600", "0640", "0660", "0644", "0664"])
def test_file_mode_accepts_owner_read_write_modes(good):
    cfg = config.parse({"agents": [{"id": "A", "file_mode": good}]}, "test.toml")
    assert cfg.agents[0].file_mode == good


@pytest.mark.parametrize("bad", ["0666", "0700", "0400", "4600", "0o640", "640x", "", "0 600", "06000"])
def test_file_mode_refuses_what_is_no_mode_for_an_inbox_file(bad):
    with pytest.raises(config.ConfigError) as e:
        config.parse({"agents": [{"id": "A", "file_mode": bad}]}, "test.toml")
    assert f"`agents[0].file_mode` = {bad!r}" in str(e.value) and '"0640"' in str(e.value)


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
