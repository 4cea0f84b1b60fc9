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

COORDD_TEST_HANDLER_RAISES=OP: every request whose op is OP (e.g. "get") raises
a RuntimeError in the handlers, as a bug would: tests/test_core.py shows the
client gets `internal` and the connection and the daemon go on serving.
"""

from __future__ import annotations

import asyncio
import logging
import os

import coordd.transports.factory
from coordd.cli import main
from coordd.handlers import Handlers
from coordd.writer import Writer

HOOKS = ("COORDD_TEST_HANG_WRITER", "COORDD_TEST_GATE_DELIVERY", "COORDD_TEST_HANDLER_RAISES")
log = logging.getLogger("coordd.faults")


def _read_to_end(path: str, what: str) -> None:
    log.warning("test hook: %s waits on %s", what, path)
    with open(path, "rb") as f:
        f.read()
    log.warning("test hook: %s goes on", what)


def hang_writer(path: str) -> None:
    commit = Writer._commit

    def commit_unless_hung(self, writes):
        if os.path.exists(path):
            _read_to_end(path, "the store writer")
        commit(self, writes)

    Writer._commit = commit_unless_hung


def gate_deliveries(path: str) -> None:
    make_transport = coordd.transports.factory.make_transport

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
    coordd.transports.factory.make_transport = make_gated


def raise_in_handler(op: str) -> None:
    handle = Handlers.handle

    async def handle_or_raise(self, req):
        if type(req).__struct_config__.tag == op:
            raise RuntimeError(f"test hook: the {op} handler fails")
        return await handle(self, req)

    Handlers.handle = handle_or_raise


if __name__ == "__main__":
    if hang := os.environ.pop("COORDD_TEST_HANG_WRITER", ""):
        hang_writer(hang)
    if gate := os.environ.pop("COORDD_TEST_GATE_DELIVERY", ""):
        gate_deliveries(gate)
    if op := os.environ.pop("COORDD_TEST_HANDLER_RAISES", ""):
        raise_in_handler(op)
    main()
