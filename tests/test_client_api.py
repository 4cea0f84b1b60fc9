"""The two clients share one definition per operation (coordctl/operations.py): the same methods, with
the same signatures and docstrings, that give the same results from a real daemon."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import get_args

import pytest
from conftest import Daemon, wait_until
from test_core import block_inbox

from coordctl import AsyncClient, Client, CoordError, protocol
from coordctl.operations import Operation, Operations

OPERATIONS = {name: op for name, op in vars(Operations).items() if isinstance(op, Operation)}
STREAMS = {protocol.Watch, protocol.Unwatch}  # requests of `watch`, which each client streams its own way


def test_every_request_has_one_operation_in_both_clients():
    builds = {name: op.build.__annotations__["return"] for name, op in OPERATIONS.items()}  # "protocol.Send"
    requested = [getattr(protocol, request.removeprefix("protocol.")) for request in builds.values()]
    assert len(requested) == len(set(requested)), "one operation per request type"
    assert set(requested) | STREAMS == set(get_args(protocol.Request)), "an operation for every request type"
    for name in OPERATIONS:
        blocking, awaitable = getattr(Client, name), getattr(AsyncClient, name)
        assert not inspect.iscoroutinefunction(blocking) and inspect.iscoroutinefunction(awaitable), name
        sig = inspect.signature(blocking)
        assert sig == inspect.signature(awaitable), name
        assert next(iter(sig.parameters)) == "self"
        assert sig.return_annotation != builds[name], "help() shows the result, not the request built"
        assert blocking.__doc__ and blocking.__doc__ == awaitable.__doc__, name
    assert inspect.signature(Client.send).return_annotation == "int"
    assert inspect.signature(AsyncClient.history).return_annotation == "protocol.Page"
    assert list(inspect.signature(Client(None).send).parameters)[:2] == ["to", "body"]


def test_both_clients_get_the_same_results(make_daemon):
    d = make_daemon(
        agents=[{"id": "A"}, {"id": "B", "groups": ["g"]}, {"id": "Doomed"}],
        delivery={"backoff_initial_ms": 20, "backoff_max_ms": 100, "max_attempts": 1},
    )
    block_inbox(d, "Doomed")
    with d.client() as c:  # a failed message for each client to retry
        doomed = [c.send("Doomed", "fails"), c.send("Doomed", "fails")]
        wait_until(lambda: all(c.get(i).message.status == "failed" for i in doomed), what="the failed deliveries")

    def run(c: Client) -> dict:
        out = {"send": c.send("A", "one", sender="s", tags=["t"], key="k-blocking")}
        out["batch"] = c.batch([{"to": "A", "body": "two"}, protocol.NewMessage(to="B", body="three")])
        out["broadcast"] = c.broadcast("all of g", group="g")
        out["retry"] = c.retry(doomed[0]) == doomed[0]
        out["get"] = c.get(out["send"]).message.body
        out["history"] = [m.body for m in c.history(agent="A", limit=2).messages]
        out["status"] = sorted(a.id for a in c.status().agents)
        out["agents"] = [a.id for a in c.agents()]
        out["ping"] = c.ping()
        out["reload"] = c.reload()
        out["metrics"] = "coordd_" in c.metrics()
        out["cancel"] = refused(lambda: c.cancel(out["send"]))  # delivered by now, or being delivered
        out["onboard"] = refused(lambda: c.onboard("A"))  # an inbox agent
        out["pointer"] = None  # needs an X display: tests/test_gui.py
        out["inbox"] = refused(lambda: c.inbox("Nobody"))  # test_receipts.py has the inboxes that answer
        out["ack"] = refused(lambda: c.ack("B", [out["send"]]))  # A's message
        out["reply"] = refused(lambda: c.reply(out["send"], "re"))  # from "s", no configured agent
        out["thread"] = [m.body for m in c.thread(out["send"])]  # test_threads.py has replies that land
        out["retry_many"] = refused(lambda: c.retry_many("Nobody"))  # test_bulk.py has the ones that act
        out["cancel_many"] = refused(lambda: c.cancel_many("Nobody"))
        out["resend"] = refused(lambda: c.resend(10**9))
        out["pause"] = c.pause("Doomed").paused  # test_pause.py has what a pause does
        out["resume"] = c.resume("Doomed").paused
        return out

    async def run_async(ac: AsyncClient) -> dict:  # the same calls, awaited
        out = {"send": await ac.send("A", "one", sender="s", tags=["t"], key="k-async")}
        out["batch"] = await ac.batch([{"to": "A", "body": "two"}, protocol.NewMessage(to="B", body="three")])
        out["broadcast"] = await ac.broadcast("all of g", group="g")
        out["retry"] = await ac.retry(doomed[1]) == doomed[1]
        out["get"] = (await ac.get(out["send"])).message.body
        out["history"] = [m.body for m in (await ac.history(agent="A", limit=2)).messages]
        out["status"] = sorted(a.id for a in (await ac.status()).agents)
        out["agents"] = [a.id for a in await ac.agents()]
        out["ping"] = await ac.ping()
        out["reload"] = await ac.reload()
        out["metrics"] = "coordd_" in await ac.metrics()
        out["cancel"] = await refused_async(ac.cancel(out["send"]))
        out["onboard"] = await refused_async(ac.onboard("A"))
        out["pointer"] = None
        out["inbox"] = await refused_async(ac.inbox("Nobody"))
        out["ack"] = await refused_async(ac.ack("B", [out["send"]]))
        out["reply"] = await refused_async(ac.reply(out["send"], "re"))
        out["thread"] = [m.body for m in await ac.thread(out["send"])]
        out["retry_many"] = await refused_async(ac.retry_many("Nobody"))
        out["cancel_many"] = await refused_async(ac.cancel_many("Nobody"))
        out["resend"] = await refused_async(ac.resend(10**9))
        out["pause"] = (await ac.pause("Doomed")).paused
        out["resume"] = (await ac.resume("Doomed")).paused
        return out

    async def with_async_client() -> dict:
        async with AsyncClient(d.socket) as ac:
            return await run_async(ac)

    with d.client() as c:
        blocking = run(c)
    awaited = asyncio.run(with_async_client())
    assert set(blocking) == set(OPERATIONS), "every operation is exercised"
    assert blocking["send"] != awaited["send"] and len(blocking["batch"]) == len(awaited["batch"]) == 2
    assert len(blocking["broadcast"]) == len(awaited["broadcast"]) == 1
    for new_ids in ("send", "batch", "broadcast"):
        del blocking[new_ids], awaited[new_ids]
    assert awaited == blocking
    assert blocking["history"] == ["two", "one"] and blocking["get"] == "one" and blocking["retry"]
    assert blocking["cancel"] == "bad_state" and blocking["onboard"] == "bad_request" and blocking["metrics"]
    assert blocking["inbox"] == "unknown_agent" and blocking["ack"] == "not_recipient"
    assert blocking["reply"] == "unknown_agent" and blocking["thread"] == ["one"]
    assert blocking["retry_many"] == blocking["cancel_many"] == "unknown_agent"
    assert blocking["resend"] == "unknown_message" and blocking["pause"] and not blocking["resume"]


def refused(call) -> str:
    with pytest.raises(CoordError) as e:
        call()
    return e.value.code


async def refused_async(call) -> str:
    with pytest.raises(CoordError) as e:
        await call
    return e.value.code


@pytest.mark.parametrize("client", ["blocking", "async"])
def test_a_waiting_send_outlasts_the_clients_reply_timeout(make_daemon, client):
    """The daemon holds a `send --wait` reply up to its timeout: the client waits that long on top of its own."""
    d: Daemon = make_daemon(agents=[{"id": "Doomed"}], delivery={"backoff_initial_ms": 60_000})
    block_inbox(d, "Doomed")  # the first attempt fails, the next is a minute away: the wait times out
    start = time.monotonic()
    if client == "blocking":
        with Client(d.socket, timeout=0.5) as c:
            code = refused(lambda: c.send("Doomed", "x", wait=True, timeout=1.0))
    else:

        async def send() -> str:
            async with AsyncClient(d.socket, timeout=0.5) as ac:
                return await refused_async(ac.send("Doomed", "x", wait=True, timeout=1.0))

        code = asyncio.run(send())
    assert code == "not_delivered"  # the daemon's answer, not the client giving up ("unavailable")
    assert time.monotonic() - start >= 1.0
