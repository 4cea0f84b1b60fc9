"""coordd with fault injection: the real daemon, started by the few tests that need to hold it still.

Run as `python tests/faulty_coordd.py run --config ...` (conftest.coordd_argv picks it when one of the
variables below is set); it patches coordd in this process only, then runs coordd's own CLI. Nothing of
it ships in the package.

Each hook waits on a FIFO the test controls: opening a FIFO for reading blocks
until the test opens it for writing, and reading ends when the test closes it.
So the test decides exactly when the blocked work goes on, without any timing.

COORDD_TEST_HANG_WRITER=PATH: before each commit, while PATH exists, the store
writer reads it to the end. The writer runs on the event-loop thread, so the
whole loop hangs: tests/test_systemd.py shows the watchdog pings stop meanwhile.

COORDD_TEST_GATE_DELIVERY=PATH: before each delivery, while PATH exists, the
worker waits (in a thread: the loop goes on serving) until PATH is read to the
end; then the real delivery runs. tests/test_systemd.py stops coordd while a
delivery is held this way.
"""

from __future__ import annotations

import asyncio
import logging
import os

import coordd.transports
from coordd.cli import main
from coordd.store import Store

HOOKS = ("COORDD_TEST_HANG_WRITER", "COORDD_TEST_GATE_DELIVERY")
log = logging.getLogger("coordd.faults")


def _read_to_end(path: str, what: str) -> None:
    log.warning("test hook: %s waits on %s", what, path)
    with open(path, "rb") as f:
        f.read()
    log.warning("test hook: %s goes on", what)


def hang_writer(path: str) -> None:
    commit = Store._commit

    def commit_unless_hung(self, writes):
        if os.path.exists(path):
            _read_to_end(path, "the store writer")
        commit(self, writes)

    Store._commit = commit_unless_hung


def gate_deliveries(path: str) -> None:
    make_transport = coordd.transports.make_transport

    def make_gated(agent, config):
        t = make_transport(agent, config)
        deliver = t.deliver

        async def gated(messages):
            if os.path.exists(path):
                await asyncio.get_running_loop().run_in_executor(None, _read_to_end, path, f"a delivery to {agent.id}")
            await deliver(messages)

        t.deliver = gated
        return t

    # Before coordd.daemon is imported (coordd.cli imports it only in `run`), so its import takes this one.
    coordd.transports.make_transport = make_gated


if __name__ == "__main__":
    if hang := os.environ.pop("COORDD_TEST_HANG_WRITER", ""):
        hang_writer(hang)
    if gate := os.environ.pop("COORDD_TEST_GATE_DELIVERY", ""):
        gate_deliveries(gate)
    main()
