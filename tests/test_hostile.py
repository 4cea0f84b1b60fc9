"""Hostile input: fuzzed frames, a thousand connections, control characters, option-like names.

The daemon is the real one. Fuzzing: hypothesis builds connections' worth of
frames (random bytes, random msgpack, requests with wrong types, huge strings,
deep nesting, length prefixes that lie, half frames then a disconnect); each
connection must get only well-formed replies with stable error codes, or be
closed, and a new client must be served after every one. After over 10,000
such frames the daemon's RSS has not grown past a bound, and its log shows no
unhandled error. Then 1,000 connections at once, idle, never reading their
replies, or stuck half-way through a frame, while another client is served.
"""

from __future__ import annotations

import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import msgspec
import pytest
from conftest import Daemon, inbox_bodies, wait_until, write_config
from figures import memory_kib, record
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from coordctl import Client, CoordError
from coordctl import protocol as p

pytestmark = pytest.mark.timeout(180)

MAX_FRAME = 1 << 20
FUZZ_FRAMES = 10_000
RSS_GROWTH_BOUND_KIB = 32 * 1024
encode = msgspec.msgpack.Encoder().encode


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


# --- strategies ------------------------------------------------------------------------------------

OPS = [
    "ping",
    "send",
    "batch",
    "broadcast",
    "status",
    "history",
    "get",
    "retry",
    "cancel",
    "agents",
    "reload",
    "onboard",
    "pointer",
]
FIELDS = [
    "rid",
    "to",
    "body",
    "sender",
    "priority",
    "kind",
    "tags",
    "key",
    "wait",
    "timeout",
    "messages",
    "group",
    "agent",
    "status",
    "since",
    "until",
    "contains",
    "limit",
    "cursor",
    "message_id",
    "message",
]
CONTROL_TEXT = st.text(st.characters(max_codepoint=0x9F), max_size=40)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=30),
    st.binary(max_size=30),
    CONTROL_TEXT,
    st.sampled_from(["A", "B", "-t", "--help", "urgent", "queued", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
huge_text = st.integers(100_000, MAX_FRAME + 1000).map(lambda n: "x" * n)
agent = st.sampled_from(["A", "B", "C", "-t", "A; rm -rf /", ""])
small_id = st.integers(-3, 400)
name = st.none() | st.text(max_size=70) | CONTROL_TEXT
body = st.one_of(*[st.text(min_size=1, max_size=200)] * 6, CONTROL_TEXT, CONTROL_TEXT, huge_text, st.just("   "))
message = st.fixed_dictionaries(
    {"to": agent, "body": body},
    optional={"sender": name, "key": name, "priority": st.sampled_from(["regular", "urgent", "loud"])},
)
plausible = {
    "to": agent,
    "agent": agent,
    "group": st.text(max_size=10),
    "body": body,
    "sender": name,
    "kind": name,
    "key": name,
    "message": st.text(max_size=50),
    "contains": st.text(max_size=20),
    "priority": st.sampled_from(["regular", "urgent", "loud"]),
    "status": st.sampled_from(["queued", "delivering", "delivered", "failed", "cancelled", "lost"]),
    "tags": st.lists(st.text(max_size=70), max_size=20),
    "messages": st.lists(message, max_size=8),
    "wait": st.booleans(),
    "timeout": st.floats(),
    "since": st.floats(),
    "until": st.floats(),
    "limit": st.integers(-5, 2000),
    "message_id": small_id | st.integers(-(2**63), 2**64 - 1),
    "cursor": small_id | st.integers(-(2**63), 2**64 - 1),
}
field_value = st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f), plausible.get(f, values) | values))
request = st.builds(
    lambda op, rid, fields: {
        **({"op": op} if op is not None else {}),
        **({"rid": rid} if rid is not None else {}),
        **dict(fields),
    },
    st.one_of(*[st.sampled_from(OPS)] * 6, values),
    st.none() | st.integers(-(2**63), 2**64 - 1) | values,
    st.lists(field_value, max_size=6),
)
# Requests of the right shape with hostile values: they reach the handlers.
well_typed = st.one_of(
    st.builds(
        lambda m, w, t: {"op": "send", **m, "wait": w, **({"timeout": t} if t is not None else {})},
        message,
        st.booleans(),
        st.none() | st.floats(0.01, 3),
    ),
    st.builds(lambda ms: {"op": "batch", "messages": ms}, st.lists(message, max_size=10)),
    st.builds(
        lambda b, g: {"op": "broadcast", "body": b, **({"group": g} if g else {})},
        body,
        st.none() | st.text(max_size=5),
    ),
    st.builds(lambda op, i: {"op": op, "message_id": i}, st.sampled_from(["get", "retry", "cancel"]), small_id),
    st.builds(
        lambda a, n, c: {"op": "history", "agent": a, "limit": n, "contains": c},
        agent,
        st.integers(0, 1001),
        st.text(max_size=5),
    ),
    st.sampled_from([{"op": "status"}, {"op": "agents"}, {"op": "ping"}]),
)


def nested(depth: int) -> bytes:
    """A ping whose rid is an array nested `depth` deep."""
    return b"\x82\xa2op\xa4ping\xa3rid" + b"\x91" * depth + b"\xc0"


# Whole frames: each gets exactly one reply (too_large aside).
whole_frame = st.one_of(
    *[well_typed.map(lambda r: framed(encode(r)))] * 4,
    *[request.map(lambda r: framed(encode(r)))] * 3,
    values.map(lambda v: framed(encode(v))),
    st.binary(max_size=200).map(framed),
    st.integers(1, 200_000).map(lambda d: framed(nested(d))),
)
# How a connection may end instead: bytes that break the framing.
broken_tail = st.one_of(
    st.binary(min_size=1, max_size=64),  # no prefix: its first bytes are read as one
    st.tuples(st.integers(MAX_FRAME + 1, 2**32 - 1), st.binary(max_size=16)).map(
        lambda t: t[0].to_bytes(4, "big") + t[1]
    ),  # too large
    st.tuples(st.integers(10, MAX_FRAME), st.binary(max_size=9)).map(
        lambda t: t[0].to_bytes(4, "big") + t[1]
    ),  # a length that lies: half a frame, then the end
)


# --- the exchange ------------------------------------------------------------------------------------


def read_frames(sock: socket.socket) -> list[bytes]:
    """Every frame the daemon sends until it closes the connection.

    A clean close ends on a whole frame. A reset (the daemon dropped a client that broke the protocol
    without reading, discarding what it had not sent yet) may cut the last frame short.
    """
    data, reset = bytearray(), False
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:
        reset = True
    frames, i = [], 0
    while len(data) - i >= 4 and len(data) - i - 4 >= (n := int.from_bytes(data[i : i + 4], "big")):
        frames.append(bytes(data[i + 4 : i + 4 + n]))
        i += 4 + n
    assert reset or i == len(data), "the daemon closed the connection half-way through a frame"
    return frames


def exchange(path: str, frames: list[bytes], tail: bytes | None, abort: bool, stats: Counter) -> None:
    """One connection: send the frames, a ping, the tail; then read every reply until the daemon closes.

    Sending runs in a thread while this one reads, as a pipelining client must: the daemon stops reading
    a client whose replies pile up unread, so a client that only reads once it has sent all could wait
    forever. abort: close right after sending, replies unread.
    """
    sentinel = p.frame(p.Ping(rid=987654321))
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(path)

    def send() -> None:
        try:
            sock.sendall(b"".join(frames) + sentinel + (tail or b""))
            sock.shutdown(socket.SHUT_WR)  # the daemon still answers every whole frame, then closes
        except (BrokenPipeError, ConnectionResetError):  # closed on us (too large): its error is readable
            pass

    try:
        if abort:  # gone without a word, replies unread (a stuck send ends at daemon.idle_timeout_s)
            send()
            return
        sender = threading.Thread(target=send)
        sender.start()
        replies = [p.reply_decoder.decode(f) for f in read_frames(sock)]
        sender.join(30)
    finally:
        sock.close()
        stats["frames"] += len(frames) + 1 + (tail is not None)
        stats["connections"] += 1
    for r in replies:
        stats[type(r).__name__] += 1
        if isinstance(r, p.Error):
            assert r.code in p.ERROR_CODES, r
            assert "internal error" not in r.message, r
            stats[r.code] += 1
    too_large = any(len(f) - 4 > MAX_FRAME for f in frames) or (
        tail is not None and len(tail) >= 4 and int.from_bytes(tail[:4], "big") > MAX_FRAME
    )
    if not too_large:  # every whole frame is answered, the sentinel included, before the connection ends
        assert any(isinstance(r, p.Pong) and r.rid == 987654321 for r in replies)
        assert len(replies) == len(frames) + 1 if tail is None else len(replies) >= len(frames) + 1


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory):
    d = Daemon(
        tmp_path_factory.mktemp("fuzz"),
        [{"id": "A"}, {"id": "B"}],
        daemon={"wait_timeout_s": 2.0, "idle_timeout_s": 3.0},
    )
    d.start()
    yield d
    d.kill()


def fuzz_round(d: Daemon, n: int, stats: Counter) -> None:
    @seed(n)
    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(whole_frame, min_size=1, max_size=25), st.none() | broken_tail, st.booleans())
    def one_connection(frames, tail, abort):
        exchange(d.socket, frames, tail, abort, stats)
        with Client(d.socket, timeout=30) as c:  # alive and serving
            assert c.ping().protocol == p.PROTOCOL_VERSION

    one_connection()


@pytest.mark.slow
def test_a_refused_client_that_reads_gets_every_reply_whole_then_the_error(daemon):
    # 400 bad requests, each answered at once with a bad_request that quotes its 2,000-character unknown
    # field (~800 KB in all: more than the socket holds, so the rest waits in coordd's buffer), then a
    # length over the frame cap, all sent before reading anything. The connection is refused, but what was
    # already answered goes out first, whole, then the refusal.
    body = msgspec.msgpack.encode({"op": "ping", "x" * 2000: 1})
    bad = len(body).to_bytes(4, "big") + body
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(daemon.socket)
        sock.sendall(bad * 400 + (MAX_FRAME + 1).to_bytes(4, "big"))
        data = bytearray()
        while chunk := sock.recv(1 << 16):
            data += chunk
    replies, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        assert i + 4 + n <= len(data), f"a reply cut short at byte {i} of {len(data)}"
        replies.append(p.reply_decoder.decode(bytes(data[i + 4 : i + 4 + n])))
        i += 4 + n
    assert [r.code for r in replies] == ["bad_request"] * 400 + ["too_large"]


def test_fuzzed_frames_get_typed_errors_and_memory_stays_bounded(fuzz_daemon):
    d, stats = fuzz_daemon, Counter()
    fuzz_round(d, 0, stats)  # warm-up: caches, the first queue growth, the allocator's arenas
    rss_before = memory_kib(d.proc.pid)
    n = 1
    while stats["frames"] < FUZZ_FRAMES:
        fuzz_round(d, n, stats)
        n += 1
    with d.client() as c:
        c.status()  # answered after whatever the last connections left running
    rss_after = memory_kib(d.proc.pid)
    log = d.logtext()
    assert "Traceback" not in log and "internal error" not in log, log[-5000:]
    assert rss_after - rss_before < RSS_GROWTH_BOUND_KIB, (rss_before, rss_after)
    with d.client() as c:
        c.send("A", "still delivering", wait=True, timeout=10)
    record(
        "fuzz",
        frames=stats["frames"],
        connections=stats["connections"],
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        peak_rss_kib=memory_kib(d.proc.pid, "VmHWM"),
        replies={k: v for k, v in stats.items() if k not in ("frames", "connections")},
    )


# --- many connections ------------------------------------------------------------------------------------


def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"needs {n} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.setblocking(False)
    return s


def closed_by_daemon(socks: list[socket.socket]) -> bool:
    """True once the daemon closed every one of socks (each reads EOF or a reset)."""
    for s in list(socks):
        try:
            while s.recv(1 << 16):
                pass
        except BlockingIOError:
            return False
        except ConnectionResetError:
            pass
        socks.remove(s)
        s.close()
    return True


@pytest.mark.slow
def test_a_thousand_connections_idle_unread_and_half_frames_others_still_served(make_daemon):
    raise_nofile(4096)
    d = make_daemon(
        agents=[{"id": "A"}, {"id": "B"}],
        daemon={"max_connections": 1100, "idle_timeout_s": 2.0, "max_write_buffer_bytes": 256 << 10},
    )
    with d.client() as c:
        for i in range(4):
            c.send("A", f"big {i} " + "y" * 200_000, wait=True, timeout=10)
    rss_start = memory_kib(d.proc.pid)
    big_history = p.frame(p.History(agent="A", limit=4))  # an ~800 KB reply
    idle = [connect(d.socket) for _ in range(800)]
    unread = [connect(d.socket) for _ in range(100)]
    half = [connect(d.socket) for _ in range(100)]
    for s in unread:
        s.sendall(big_history * 100)  # and never read a reply
    for s in half:
        s.sendall((5000).to_bytes(4, "big") + b"\x81\xa2op")  # a frame that never completes
    held = len(idle) + len(unread) + len(half)
    with Client(d.socket) as c:  # the 1,001st client (no timeout: its connect waits in the listen backlog)
        for i in range(20):
            c.send("B", f"served {i}", wait=True, timeout=20)
        assert len(c.history(agent="B", limit=50).messages) == 20
    rss_loaded = memory_kib(d.proc.pid)
    bound_kib = len(unread) * (256 + 800) + 64 * 1024  # per stuck client: its write buffer and one ~800 KB reply
    # Clients that do not read, and idle and half-frame ones, are dropped after idle_timeout_s.
    wait_until(lambda: closed_by_daemon(unread), 30, "the non-reading clients dropped")
    wait_until(lambda: closed_by_daemon(idle) and closed_by_daemon(half), 30, "idle connections closed")
    assert "replies unread for over 2 s" in d.logtext()
    assert inbox_bodies(d.inbox("B")) == [f"served {i}" for i in range(20)]
    assert rss_loaded - rss_start < bound_kib, (rss_start, rss_loaded, bound_kib)
    with d.client() as c:
        assert c.ping()
    record(
        "connections",
        connections_held=held,
        peak_rss_kib=memory_kib(d.proc.pid, "VmHWM"),
        rss_start_kib=rss_start,
        rss_loaded_kib=rss_loaded,
    )


def test_past_max_connections_a_clear_error(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], daemon={"max_connections": 20})
    held = [connect(d.socket) for _ in range(20)]
    for s in held:  # a watch each: not idle, so none is closed to make room (tests/test_limits.py)
        s.settimeout(10)
        s.sendall(p.frame(p.Watch(rid=1)))
        head = s.recv(4, socket.MSG_WAITALL)
        assert isinstance(p.reply_decoder.decode(s.recv(int.from_bytes(head, "big"), socket.MSG_WAITALL)), p.Watching)
    with pytest.raises(CoordError) as e, Client(d.socket, timeout=10) as c:
        c.ping()
    assert e.value.code == "unavailable" and "daemon.max_connections" in e.value.message
    held.pop().close()
    with Client(d.socket, timeout=10) as c:
        wait_until(lambda: _pings(c), 10, "a free connection slot")
    for s in held:
        s.close()


def _pings(c: Client) -> bool:
    try:
        return bool(c.ping())
    except CoordError:
        return False


async def test_idle_connections_are_closed_and_clients_reconnect(make_daemon):
    import asyncio

    from coordctl import AsyncClient

    d = make_daemon(agents=[{"id": "A"}], daemon={"idle_timeout_s": 0.5})
    with Client(d.socket, timeout=10) as c:
        async with AsyncClient(d.socket, timeout=10) as ac:
            assert c.ping() and await ac.ping()
            probe = connect(d.socket)  # connected last: once it is closed, the two above are too
            deadline = time.monotonic() + 10
            while not closed_by_daemon([probe]):  # the loop runs meanwhile, as in an idle asyncio program
                assert time.monotonic() < deadline, "the idle connection was never closed"
                await asyncio.sleep(0.01)  # noqa: sleep-ok: the poll interval of a deadline-bounded wait
            assert c.ping() and await ac.ping()  # both reconnect by themselves
            assert c.send("A", "after the idle close", wait=True)
    assert inbox_bodies(d.inbox("A")) == ["after the idle close"]


async def test_an_async_client_reconnects_when_its_idle_connection_was_closed_unseen(make_daemon):
    """The daemon closes an idle AsyncClient's connection while the client's loop is busy elsewhere, so that its
    reply task has not seen the end when the next call writes: that write fails at once, reached nothing, and
    goes again on a new connection (a fresh-clone CI run failed the test above on this)."""
    from coordctl import AsyncClient

    d = make_daemon(agents=[{"id": "A"}], daemon={"idle_timeout_s": 0.5})
    async with AsyncClient(d.socket, timeout=10) as ac:
        assert await ac.ping()
        probe = connect(d.socket)  # connected last: once it is closed, ac's connection is too
        wait_until(lambda: closed_by_daemon([probe]), 10, "the idle connections closed")  # blocks ac's loop
        assert await ac.send("A", "after the unseen close") > 0
    assert wait_until(lambda: inbox_bodies(d.inbox("A")), 10, "the delivery") == ["after the unseen close"]


def test_half_closed_client_gets_every_reply(daemon):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(daemon.socket)
    reqs = [p.Send(rid=i, to="Agent-1", body=f"m{i}", wait=True, timeout=10) for i in range(100)]  # > 64 in flight
    s.sendall(b"".join(p.frame(r) for r in reqs))
    s.shutdown(socket.SHUT_WR)
    replies = [p.reply_decoder.decode(f) for f in read_frames(s)]
    s.close()
    assert sorted(r.rid for r in replies) == list(range(100))
    assert all(isinstance(r, p.Sent) and r.status == "delivered" for r in replies)


# --- control characters and option-like names ------------------------------------------------------------

ESCAPES = (
    "\x1b[31mred\x1b[0m \x1b]0;title\x07 \x1b[2J \x1b[200~paste\x1b[201~ ^C:\x03 DEL:\x7f C1:\x9b bell:\x07 \r\nend"
)


def test_control_characters_are_delivered_literally_by_default(make_daemon):
    d = make_daemon(agents=[{"id": "A"}])
    with d.client() as c:
        i = c.send("A", ESCAPES, wait=True, timeout=10)
        assert c.get(i).message.body == ESCAPES
    [path] = d.inbox("A").glob("*.md")
    assert path.read_bytes().decode().endswith("\n\n" + ESCAPES + "\n")  # bytes: no newline translation


def test_control_characters_rejected_by_policy(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], daemon={"control_chars": "reject"})
    with d.client() as c:
        with pytest.raises(CoordError) as e:
            c.send("A", "looks fine \x1b[2J but is not")
        assert e.value.code == "bad_request"
        assert (
            "U+001B" in e.value.message and "offset 11" in e.value.message and "daemon.control_chars" in e.value.message
        )
        with pytest.raises(CoordError) as e:
            c.batch([{"to": "A", "body": "fine"}, {"to": "A", "body": "C1 \x9b too"}])
        assert "messages[1].body" in e.value.message
        c.send("A", "tabs\tand\nnewlines are text", wait=True, timeout=10)
        assert c.status().rows == 1  # nothing of the refused batch was stored
    assert inbox_bodies(d.inbox("A")) == ["tabs\tand\nnewlines are text"]


@pytest.mark.parametrize("field", ["sender", "kind", "tags"])
def test_header_fields_cannot_inject_lines(daemon, field):
    evil = "Agent-2\nto: Agent-4\n---\n\nforged body"
    with daemon.client() as c:
        with pytest.raises(CoordError) as e:
            c.send("Agent-1", "hi", **{field: [evil] if field == "tags" else evil})
        assert e.value.code == "bad_request" and field in e.value.message and "U+000A" in e.value.message


@pytest.mark.parametrize(
    "agent, key",
    [
        ({"id": "-t"}, "agents[0].id"),
        ({"id": "--help"}, "agents[0].id"),
        ({"id": "A", "groups": ["-all"]}, "agents[0].groups"),
        ({"id": "A", "transport": "tmux", "target": "-t"}, "agents[0].target"),
        ({"id": "A", "transport": "tmux", "target": "=-x:0"}, "agents[0].target"),
        ({"id": "A", "transport": "tmux", "target": "s:0", "socket_name": "-L"}, "agents[0].socket_name"),
    ],
)
def test_option_like_names_are_refused_at_config(tmp_path, agent, key):
    path = write_config(tmp_path / "c.toml", {}, [agent])
    out = subprocess.run([sys.executable, "-m", "coordd", "check-config", str(path)], capture_output=True, text=True)
    assert out.returncode != 0 and key in out.stderr, out.stderr


def test_option_like_agent_in_a_request_is_just_unknown(daemon):
    with daemon.client() as c:
        for name in ["-t", "--help", "Agent-1 -t x", "Agent-1\n"]:
            with pytest.raises(CoordError) as e:
                c.send(name, "x")
            assert e.value.code == "unknown_agent"
            with pytest.raises(CoordError) as e:
                c.history(agent=name)
            assert e.value.code == "unknown_agent"


@pytest.mark.parametrize("op", ["thread", "inbox"])
def test_a_client_reading_no_replies_gets_one_large_thread_or_inbox_reply_at_a_time(make_daemon, op):
    """thread and inbox (when it does not wait) can answer with a frame of up to max_frame_bytes: like history,
    they run one at a time per connection and only while its client reads, so a client sending many and
    reading none holds one reply, not one per request."""
    d = make_daemon(agents=[{"id": "A"}])
    with d.client() as c:
        first = c.send("A", "x" * 60_000, wait=True, timeout=10)
        for _ in range(3):
            c.send("A", "y" * 60_000, reply_to=first, wait=True, timeout=10)
    request = p.Thread(message_id=first, limit=4) if op == "thread" else p.Inbox(agent="A", unread=False, limit=4)
    rss_start = memory_kib(d.proc.pid)
    stuck = connect(d.socket)
    stuck.sendall(p.frame(request) * 60)  # ~240 KB a reply, never read: 14 MB if all were answered
    with d.client() as c:  # served meanwhile, through the same gate, after the stuck client's first
        answered = getattr(c, op)(first if op == "thread" else "A", **({"unread": False} if op == "inbox" else {}))
        assert len(answered) == 4
        count = re.search(rf'coordd_rpc_duration_seconds_count{{method="{op}"}} (\S+)', c.metrics())
    assert float(count[1]) <= 3, "the stuck client's requests ran without it reading their replies"
    assert memory_kib(d.proc.pid) - rss_start < 6 * 1024
    stuck.close()
