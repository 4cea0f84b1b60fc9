"""Inbox retention: each inbox directory keeps at most [retention] inbox_max_files message files, none older than
inbox_max_age_days, oldest first; only coordd's own files go; `status` shows each inbox's file count."""

from __future__ import annotations

import asyncio
import os
import time

from conftest import wait_until

from coordd.config import InboxAgent, Retention
from coordd.inbox_retention import InboxPruner
from coordd.model import Record
from coordd.transports.inbox import InboxTransport


def message_files(d, agent: str) -> list[str]:
    return sorted(p.name for p in d.inbox(agent).iterdir() if p.name.endswith(".md") and not p.name.startswith("."))


def inbox_files(c, agent: str) -> int | None:
    return next(a.inbox_files for a in c.status().agents if a.id == agent)


def test_an_inbox_capped_at_100_keeps_the_newest_100_after_1000_deliveries(make_daemon):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}], retention={"inbox_max_files": 100})
    with d.client() as c:
        wait_until(lambda: inbox_files(c, "A") == 0, what="the count at start (no directory yet)")
        ids: list[int] = []
        for n in range(10):
            ids += c.batch([{"to": "A", "body": f"m{n}.{i}"} for i in range(100)])
        c.send("B", "one", wait=True)
        wait_until(lambda: sum(a.delivered for a in c.status().agents) == 1001, what="1,000 deliveries stored")
        assert message_files(d, "A") == [f"{i:012d}.md" for i in sorted(ids)[-100:]]
        assert inbox_files(c, "A") == 100 and inbox_files(c, "B") == 1


def test_files_past_the_age_bound_go_and_only_coordd_files(make_daemon, tmp_path):
    d = make_daemon(agents=[{"id": "A"}], retention={"inbox_max_age_days": 1, "prune_interval_s": 0.2})
    with d.client() as c:
        ids = c.batch([{"to": "A", "body": f"m{i}"} for i in range(10)])
        wait_until(lambda: c.status().queued == 0 and inbox_files(c, "A") == 10, what="10 deliveries counted")
        inbox = d.inbox("A")
        aged = ["notes.md", *message_files(d, "A")[:4]]
        two_days_ago = time.time() - 2 * 86400
        outside = tmp_path / "not-an-inbox-file"
        outside.write_text("kept")
        (inbox / "notes.md").write_text("the agent's own")  # not a name coordd writes: never removed
        (inbox / "000000000000.md").symlink_to(outside)  # named as coordd names files: the link goes, not its target
        for name in aged:
            os.utime(inbox / name, (two_days_ago, two_days_ago))
        os.utime(inbox / "000000000000.md", (two_days_ago, two_days_ago), follow_symlinks=False)
        wait_until(lambda: len(message_files(d, "A")) == 6 + 1, what="the 4 aged files and the link removed")
        assert message_files(d, "A") == [f"{i:012d}.md" for i in ids[4:]] + ["notes.md"]
        assert outside.read_text() == "kept"
        wait_until(lambda: inbox_files(c, "A") == 6, what="the count to follow")


def test_a_reload_applies_new_bounds(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], retention={"inbox_max_files": 0})  # no bound
    with d.client() as c:
        ids = c.batch([{"to": "A", "body": f"m{i}"} for i in range(50)])
        wait_until(lambda: inbox_files(c, "A") == 50, what="50 files")
        d.config.write_text(d.config.read_text().replace("inbox_max_files = 0", "inbox_max_files = 20"))
        c.reload()
        wait_until(lambda: inbox_files(c, "A") == 20, what="the new bound applied")
        assert message_files(d, "A") == [f"{i:012d}.md" for i in ids[-20:]]


def test_the_files_of_a_batch_being_written_are_never_removed(tmp_path):
    """In process, the real transport and pass: a bound below the batch size removes none of the batch."""
    inbox = tmp_path / "inbox"
    retention = Retention(inbox_max_files=1)

    def names() -> list[str]:
        return sorted(p.name for p in inbox.iterdir())

    async def scenario() -> None:
        t = InboxTransport(InboxAgent(id="A", inbox_dir=str(inbox)), retention)
        pruner = InboxPruner(retention, lambda: [t], lambda coro, name: None)
        await pruner.prune(t)
        assert t.files() == 0
        await t.deliver([Record(i, "A", f"m{i}", "regular", time.time()) for i in range(1, 6)])
        assert names() == [f"{i:012d}.md" for i in range(1, 6)] and t.files() == 5  # all in flight when written
        await t.deliver([Record(6, "A", "m6", "regular", time.time())])
        assert names() == [f"{i:012d}.md" for i in range(3, 7)]  # the oldest two: two a message written, at most
        assert await pruner.prune(t) == 3
        assert names() == ["000000000006.md"] and t.files() == 1
        await t.close()

    asyncio.run(scenario())
