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
import shutil
import stat
from pathlib import Path

import pytest
from conftest import Daemon, read_inbox_file
from figures import record

from coordd import config
from coordd.model import Record
from coordd.transports.inbox import render

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


def refused_start(d: Daemon) -> str:
    """Start d, which must refuse: exit 1 with a one-line reason, never serving. Its log."""
    d.start(expect_ready=False)
    assert d.proc.wait(20) == 1, f"coordd started: {d.logtext()}"
    log = d.logtext()
    assert "Traceback" not in log and not os.path.exists(d.socket), log
    return log


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
    for n, victim in zip(ids, (by_symlink, by_hard_link), strict=True):
        path = inbox / f"{n:012d}.md"
        assert not path.is_symlink() and path.stat().st_ino != victim.stat().st_ino
        fields, body = read_inbox_file(path)
        assert (fields["id"], fields["from"], body) == (n, "B", f"message {n}")
        assert mode(path) == 0o600
    assert not list(inbox.glob(".*.tmp"))
    record(
        "hardening_inbox_links",
        hardening="symlink/hard link planted at inbox temp+final path",
        outcome="link replaced, its target untouched; message arrives",
    )


def test_inbox_files_are_0600_whatever_the_umask_and_directory_mode(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], start=False)
    d.inbox("A").mkdir(parents=True)
    d.inbox("A").chmod(0o777)
    with umask(0):
        d.start()
    with d.client() as c:
        i = c.send("A", "private", wait=True, timeout=10)
    assert mode(d.inbox("A") / f"{i:012d}.md") == 0o600
    record(
        "hardening_inbox_mode",
        hardening="inbox file in a 0777 dir, daemon started with umask 0",
        outcome="file is 0600",
    )


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


# --- one daemon per database ------------------------------------------------------------------------------


def test_a_second_daemon_on_the_same_database_is_refused(make_daemon, tmp_path):
    first = make_daemon(agents=[{"id": "A"}])
    with first.client() as c:
        c.send("A", "before", wait=True, timeout=10)
    (tmp_path / "second").mkdir()
    second = make_daemon(agents=[{"id": "A"}], sub="second", start=False, store={"path": first.db})
    log = refused_start(second)
    assert f"another coordd (pid {first.proc.pid}) is using the database {first.db}" in log, log
    lock = Path(first.db + ".lock")
    assert lock.read_text() == f"{first.proc.pid}\n" and mode(lock) == 0o600
    with first.client() as c:  # the first one is undisturbed
        c.send("A", "after", wait=True, timeout=10)
        assert c.status().rows == 2
    record(
        "hardening_second_daemon",
        hardening="second daemon, other socket, same database",
        outcome="refused at start, names the holder's pid",
    )


def test_deleting_the_socket_directory_does_not_free_the_database(make_daemon, tmp_path):
    first = make_daemon(agents=[{"id": "A"}])
    shutil.rmtree(Path(first.socket).parent)  # the socket and its lock file go; the daemon runs on
    (tmp_path / "second").mkdir()
    second = make_daemon(
        agents=[{"id": "A"}], sub="second", start=False, daemon={"socket": first.socket}, store={"path": first.db}
    )
    log = refused_start(second)
    assert f"another coordd (pid {first.proc.pid}) is using the database {first.db}" in log, log
    assert first.proc.poll() is None
    record(
        "hardening_socket_dir_deleted",
        hardening="socket dir deleted, second daemon on same socket+db",
        outcome="refused at start, names the holder's pid",
    )


# --- private store files ----------------------------------------------------------------------------------


def store_files(d: Daemon) -> list[str]:
    return [d.db, d.db + "-wal", d.db + "-shm", d.db + ".lock"]  # the lock last: main had none


def modes(paths: list[str]) -> dict[str, int | None]:
    return {p: mode(p) if os.path.lexists(p) else None for p in paths}


def test_store_files_are_0600_in_a_loose_directory(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], start=False)
    state = Path(d.db).parent
    state.mkdir()
    state.chmod(0o755)
    with umask(0):
        d.start()
    with d.client() as c:
        c.batch([{"to": "A", "body": f"first run {i}"} for i in range(50)])
    assert modes(store_files(d)) == dict.fromkeys(store_files(d), 0o600)
    d.kill()  # the -wal and -shm stay, as a crash leaves them
    for f in store_files(d):
        os.chmod(f, 0o644)  # as a looser umask or another tool left them
    with umask(0):
        d.start()
    assert modes(store_files(d)) == dict.fromkeys(store_files(d), 0o600)
    with d.client() as c:
        c.batch([{"to": "A", "body": f"second run {i}"} for i in range(50)])
        c.send("A", "last", wait=True, timeout=10)
    assert modes(store_files(d)) == dict.fromkeys(store_files(d), 0o600)
    assert f"the store directory {state} is mode 0755" in d.logtext()
    record(
        "hardening_store_modes",
        hardening="store dir 0755, db/wal/shm 0644 from an earlier run",
        outcome="all 0600 at start and after writes; warning",
    )


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_link_in_place_of_a_store_file_is_refused(make_daemon, tmp_path, suffix):
    d = make_daemon(agents=[{"id": "A"}], start=False)
    Path(d.db).parent.mkdir()
    victim = tmp_path / "victim"
    victim.touch()  # empty: SQLite would take it for a new database
    victim.chmod(0o644)
    before = fingerprint(victim)
    os.symlink(victim, d.db + suffix)
    log = refused_start(d)
    assert f"cannot use {d.db + suffix}: it is a symbolic link" in log, log
    assert fingerprint(victim) == before


@pytest.mark.parametrize("which", ["socket", "database"])
def test_a_link_in_place_of_a_lock_file_is_refused(make_daemon, tmp_path, which):
    d = make_daemon(agents=[{"id": "A"}], start=False)
    lock = (d.socket if which == "socket" else d.db) + ".lock"
    Path(lock).parent.mkdir(mode=0o700)
    victim = plant_victim(tmp_path / "victim")
    before = fingerprint(victim)
    os.symlink(victim, lock)
    log = refused_start(d)
    assert f"cannot use the lock file {lock}: it is a symbolic link" in log, log
    assert fingerprint(victim) == before


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
        "id": i,
        "from": sender,
        "to": "A",
        "priority": "regular",
        "kind": kind,
        "tags": tags,
    }
    assert got == body
    record(
        "hardening_inbox_header",
        hardening="sender/kind/tags crafted to forge inbox header fields",
        outcome="every value JSON-quoted; header parses as sent",
    )


def test_line_breaks_in_header_values_are_escaped():
    """Whatever validation lets through: no character any reader takes for a line break stays raw."""
    sender = "B\nto: Z\u2028priority: urgent"
    kind = "k\x85from: X\r---"
    tags = ["t\u2029---", "\x1c\x1d\x1e\x0b\x0c"]
    text = render(
        Record(id=7, agent="A", body="body", priority="regular", created=0, sender=sender, kind=kind, tags=tags)
    )
    head, body = text.split("\n---\n\n", 1)
    lines = head.splitlines()  # str.splitlines breaks on all of them, as YAML 1.1 does on NEL, LS and PS
    assert lines[0] == "---" and [line.partition(": ")[0] for line in lines[1:]] == [
        "id",
        "from",
        "to",
        "priority",
        "kind",
        "time",
        "tags",
    ]
    fields = {k: json.loads(v) for k, _, v in (line.partition(": ") for line in lines[1:])}
    assert (fields["from"], fields["kind"], fields["tags"], body) == (sender, kind, tags, "body\n")
