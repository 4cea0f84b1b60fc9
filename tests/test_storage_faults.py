"""Storage faults: a full disk under the database, and a corrupt or unusable database at start.

The full disk is real: the database lives on a 4 MiB tmpfs mounted for the test
(root is needed to mount; without it the test is skipped with that reason), and
a filler file takes the rest of the space. Sends then get `storage_full`, the
daemon keeps serving reads and deliveries, and once the filler is removed sends
succeed again and the outcomes of deliveries made meanwhile are recorded.
Nothing acknowledged is lost, across a SIGKILL too.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from conftest import Daemon, cancel_between_attempts, inbox_bodies, tmpfs, wait_until
from figures import record

from coordctl import PROTOCOL_VERSION, CoordError

FAST_RETRY = {"backoff_initial_ms": 20, "backoff_max_ms": 100, "unhealthy_recheck_ms": 50}


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs, unmounted at the end."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    with tmpfs(mnt, "size=4m,mode=0700"):
        yield mnt


def fill(path: Path) -> int:
    """Write path until the file system is full; return the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 512):  # big blocks, then the last partial one
            try:
                while True:
                    written += f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    return written


def test_disk_full_refuses_sends_keeps_serving_then_resumes(make_daemon, small_fs):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], store={"path": str(small_fs / "coordd.db")}, delivery=FAST_RETRY)
    acked: list[int] = []
    refused: list[str] = []
    body = "x" * 2000
    with d.client() as c:
        acked += c.batch([{"to": "AB"[i % 2], "body": f"before {i} {body}"} for i in range(50)])
        filler = small_fs / "filler"
        fill(filler)
        for i in range(3000):  # the WAL has some room left in pages it already holds: use it up
            try:
                acked.append(c.send("AB"[i % 2], f"during {i} {body}"))
            except CoordError as e:
                refused.append(e.code)
                assert e.code == "storage_full", e
                assert "full" in e.message and "free some space" in e.message
                if len(refused) >= 20:
                    break
        assert len(refused) >= 20, "the disk never filled up"
        for n in (2, 3000):  # 3000: a large batch, stored a chunk per turn of the loop in one transaction
            with pytest.raises(CoordError) as e:
                c.batch([{"to": "AB"[i % 2], "body": f"batch {i} {body[:200]}"} for i in range(n)])
            assert e.value.code == "storage_full"
        # Still serving: reads, status, and deliveries of what was acknowledged.
        assert c.ping().protocol == PROTOCOL_VERSION
        assert c.get(acked[0]).message.id == acked[0]
        wait_until(
            lambda: len(inbox_bodies(d.inbox("A")) + inbox_bodies(d.inbox("B"))) == len(acked),
            20,
            "acknowledged messages delivered while the disk is full",
        )
        assert d.proc.poll() is None

        filler.unlink()
        acked.append(c.send("A", "after the space came back", wait=True, timeout=10))
        acked += c.batch([{"to": "B", "body": f"after {i}"} for i in range(10)])
        # Outcomes of the deliveries made while full are recorded now, without a restart.
        wait_until(lambda: sum(a.delivered for a in c.status().agents) == len(acked), 20, "every outcome recorded")
    # Whether an outcome write met the full disk depends on timing: a WAL checkpoint can make room in
    # the WAL's own file meanwhile. If one did, it was retried and recorded, as the count above shows.
    log = d.logtext()
    assert ("cannot record" in log) <= ("recorded again" in log), log[-2000:]

    d.kill()
    d.start()
    with d.client() as c:
        for i in acked:
            assert c.get(i).message.status == "delivered"
        assert c.status().rows == len(acked)
    texts = inbox_bodies(d.inbox("A")) + inbox_bodies(d.inbox("B"))
    assert len(texts) == len(set(texts)) == len(acked)
    record("storage_full", acknowledged=len(acked), refused_storage_full=len(refused) + 1, lost=0, faults=1)


def test_pruning_on_a_full_disk_waits_for_space(make_daemon, small_fs):
    """Retention deletes need room in the WAL too: on a full disk they fail, and the daemon carries on."""
    d = make_daemon(
        agents=[{"id": "A"}],
        store={"path": str(small_fs / "coordd.db")},
        delivery=FAST_RETRY,
        retention={"max_age_days": 2 / 86400, "prune_interval_s": 0.1},
    )
    block_inbox(d, "A")  # queued messages are never pruned; cancelled ones are, once 2 s old
    with d.client() as c:
        cancelled = c.batch([{"to": "A", "body": f"to cancel {i}"} for i in range(30)])
        for i in cancelled:
            wait_until(lambda i=i: cancel_between_attempts(c, i), 10, f"message {i} cancelled between attempts")
        fill(small_fs / "filler")
        queued = []
        while True:  # use up what room the WAL still has
            try:
                queued.append(c.send("A", "x" * 2000))
            except CoordError as e:
                assert e.code == "storage_full", e
                break
        wait_until(lambda: "pruning failed" in d.logtext() or d.proc.poll() is not None, 10, "a prune pass")
        assert d.proc.poll() is None, f"coordd died: {d.logtext()[-3000:]}"
        assert c.ping()
        (small_fs / "filler").unlink()
        wait_until(lambda: c.status().rows == len(queued), 10, "the cancelled messages pruned once there is room")
        d.inbox("A").unlink()
        wait_until(lambda: sum(a.delivered for a in c.status().agents) == len(queued), 20, "the queued ones delivered")


def block_inbox(d: Daemon, agent: str) -> None:
    """A regular file where the inbox directory should be: deliveries fail until it is removed."""
    d.inbox(agent).parent.mkdir(parents=True, exist_ok=True)
    d.inbox(agent).write_text("not a directory")


def _start_fails(tmp: Path, db: str) -> str:
    d = Daemon(tmp, [{"id": "A"}], store={"path": db})
    d.start(expect_ready=False)
    assert d.proc.wait(20) != 0, "coordd started on a database it cannot use"
    return d.logtext()


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _make_db(tmp: Path, n: int = 300) -> Daemon:
    d = Daemon(tmp, [{"id": "A"}]).start()
    with d.client() as c:
        c.batch([{"to": "A", "body": f"message {i} " + "y" * 300} for i in range(n)])
        wait_until(lambda: c.status().queued == 0, 20, "deliveries")
    assert d.stop() == 0  # a clean stop: everything checkpointed into the main file
    return d


@pytest.mark.parametrize("damage", ["header", "page"])
def test_corrupt_database_stops_the_start_and_is_left_as_it_is(tmp_path, damage):
    d = _make_db(tmp_path)
    size = os.path.getsize(d.db)
    with open(d.db, "r+b") as f:
        if damage == "header":
            f.write(b"this is not an SQLite header at all")
        else:  # garbage over a page in the middle: the header still says SQLite
            f.seek(size // 2 // 4096 * 4096)
            f.write(bytes(range(256)) * 16)
    before = _digest(d.db)
    log = _start_fails(tmp_path, d.db)
    assert d.db in log and "never replaces it" in log and "move it aside" in log, log
    assert ("not a database" if damage == "header" else "corrupt") in log, log
    assert _digest(d.db) == before, "the corrupt database was changed"
    assert os.path.getsize(d.db) == size
    record(f"corrupt_db_{damage}", faults=1)


def test_unusable_store_path_is_a_clear_error(tmp_path):
    (tmp_path / "db-dir").mkdir()
    log = _start_fails(tmp_path, str(tmp_path / "db-dir"))
    assert "not a regular file" in log and "store.path" in log, log
    (tmp_path / "plain").write_text("a file where a directory should be")
    log = _start_fails(tmp_path, str(tmp_path / "plain" / "coordd.db"))
    assert "cannot use store.path" in log, log
    assert "Traceback" not in log


def test_foreign_sqlite_database_is_refused(tmp_path):
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    before = _digest(str(other))
    log = _start_fails(tmp_path, str(other))
    assert "not a coordd one" in log and _digest(str(other)) == before
