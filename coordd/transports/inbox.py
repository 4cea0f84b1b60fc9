"""The inbox transport: one Markdown file per message in the agent's inbox directory.

Files are named by message id (`<id:012d>.md`, so `ls` lists them in delivery
order) and written to a temp file, then renamed: a reader never sees half a
message, and a re-delivery of the same id replaces the file instead of adding a
second one. The file writes run in a worker thread, a chunk of messages per trip,
so the event loop keeps accepting sends while a long queue drains.
"""

from __future__ import annotations

import asyncio
import os
import time

from coordd.config import InboxAgent
from coordd.store import Record
from coordd.transports import DeliveryError, Transport


def render(m: Record) -> str:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m.created))
    lines = [
        "---",
        f"id: {m.id}",
        f"from: {m.sender or 'unknown'}",
        f"to: {m.agent}",
        f"priority: {m.priority}",
        f"kind: {m.kind or 'message'}",
        f"time: {created}",
    ]
    if m.tags:
        lines.append(f"tags: [{', '.join(m.tags)}]")
    lines += ["---", "", m.body, ""]
    return "\n".join(lines)


class InboxTransport(Transport):
    name = "inbox"

    def __init__(self, agent: InboxAgent) -> None:
        self.dir = agent.inbox_dir
        self.fsync = agent.fsync
        self.max_batch = agent.chunk

    def health(self) -> str | None:
        return None  # a missing or unwritable directory is a per-message failure, retried with backoff

    async def deliver(self, messages: list[Record]) -> None:
        done, error = await asyncio.get_running_loop().run_in_executor(None, self._write_all, messages)
        if error is not None:
            raise DeliveryError(error, delivered=done)

    def _write_all(self, messages: list[Record]) -> tuple[int, str | None]:
        """Runs in a worker thread: how many were written, in order, and why the next one was not."""
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
        except FileExistsError:
            return 0, f"inbox {self.dir} exists but is not a directory"
        except OSError as e:
            return 0, f"cannot create inbox {self.dir}: {e.strerror}"
        for n, m in enumerate(messages):
            name = os.path.join(self.dir, f"{m.id:012d}.md")
            tmp = os.path.join(self.dir, f".{m.id:012d}.md.tmp")
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(render(m))
                    if self.fsync:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, name)
            except OSError as e:
                return n, f"cannot write {name}: {e.strerror}"
        return len(messages), None
