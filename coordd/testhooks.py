"""Fault injection for the test suite. Inert unless its environment variable is set; never set it otherwise.

Each hook waits on a FIFO the test controls: opening a FIFO for reading blocks
until the test opens it for writing, and reading ends when the test closes it.
So the test decides exactly when the blocked work goes on, without any timing.

COORDD_TEST_HANG_WRITER=PATH: before each commit, while PATH exists, the store
writer reads it to the end. The writer runs on the event-loop thread, so the
whole loop hangs: tests/test_systemd.py shows the watchdog pings stop meanwhile.

COORDD_TEST_GATE_DELIVERY=PATH: before each delivery, while PATH exists, the
worker waits (in a thread: the loop goes on serving) until PATH is read to the
end; then the real delivery runs. Applies to the transports made at start.
tests/test_systemd.py stops coordd while a delivery is held this way.
"""

from __future__ import annotations

import asyncio
import logging
import os

from coordd.store import Store
from coordd.transports import Transport

log = logging.getLogger("coordd.testhooks")


def _read_to_end(path: str, what: str) -> None:
    log.warning("test hook: %s waits on %s", what, path)
    with open(path, "rb") as f:
        f.read()
    log.warning("test hook: %s goes on", what)


def install(store: Store, transports: dict[str, Transport]) -> None:
    hang = os.environ.pop("COORDD_TEST_HANG_WRITER", "")
    gate = os.environ.pop("COORDD_TEST_GATE_DELIVERY", "")
    if hang:
        commit = store._commit

        def commit_unless_hung(writes):
            if os.path.exists(hang):
                _read_to_end(hang, "the store writer")
            commit(writes)

        store._commit = commit_unless_hung
    if gate:
        for agent_id, t in transports.items():
            deliver = t.deliver

            async def gated(messages, deliver=deliver, what=f"a delivery to {agent_id}"):
                if os.path.exists(gate):
                    await asyncio.get_running_loop().run_in_executor(None, _read_to_end, gate, what)
                await deliver(messages)

            t.deliver = gated
