"""Limits that keep one client from costing the others: nesting, rids.

The daemon is the real one, spoken to over raw sockets where a test needs bytes coordctl would never send.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import msgspec
import pytest

from coordctl import protocol as p
from figures import record

pytestmark = pytest.mark.timeout(180)
encode = msgspec.msgpack.Encoder().encode


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def replies(sock: socket.socket) -> Iterator[p.Reply]:
    """The replies on sock as they come, until the daemon closes it."""
    data = bytearray()
    while True:
        while len(data) >= 4 and len(data) - 4 >= (size := int.from_bytes(data[:4], "big")):
            yield p.reply_decoder.decode(bytes(data[4 : 4 + size]))
            del data[: 4 + size]
        if not (chunk := sock.recv(1 << 16)):
            return
        data += chunk


def read_replies(sock: socket.socket, n: int) -> list[p.Reply]:
    """The next n replies on sock (fewer if the daemon closes it first)."""
    return list(itertools.islice(replies(sock), n))


def raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
    return s


# --- nesting and rids ---------------------------------------------------------------------------------------


def test_deep_nesting_is_a_bad_request_and_the_earlier_replies_arrive(daemon):
    deep = b"\x91" * 100_000 + b"\xc0"  # an array in an array ... 100,000 deep
    frames = [
        p.frame(p.Ping(rid=1)),
        p.frame(p.Send(rid=2, to="Agent-1", body="before the deep frames")),
        framed(b"\x83\xa3rid\x03\xa1x" + deep + b"\xa2op\xa4ping"),  # nested before the op; the rid before that
        framed(b"\x83\xa1x" + deep + b"\xa2op\xa4ping\xa3rid\x04"),  # the rid lies beyond the nesting: rid 0
        framed(b"\x82\xa1x" + b"\x81\xa1x" * 50_000 + b"\xc0" + b"\xa2op\xa4ping"),  # maps in maps: rid 0
        framed(b"\x83\xa2op\xa4ping\xa3rid\x06\xa1x" + deep),  # nested after the op
        p.frame(p.Ping(rid=7)),
    ]
    with raw(daemon.socket) as s:
        s.sendall(b"".join(frames))
        got = read_replies(s, 7)
        bad = ("Error", "bad_request")
        assert sorted((r.rid, type(r).__name__, getattr(r, "code", None)) for r in got) == [
            (0, *bad), (0, *bad), (1, "Pong", None), (2, "Sent", None), (3, *bad), (6, *bad), (7, "Pong", None)], got  # fmt: skip
        assert "nested deeper than 32 levels" in next(r.message for r in got if r.rid == 3)
        s.sendall(p.frame(p.Ping(rid=8)))  # the same connection still serves
        assert [r.rid for r in read_replies(s, 1)] == [8]
    assert "Traceback" not in daemon.logtext()
    record("hardening_deep_nesting", hardening="a frame nested 100,000 deep amid pipelined requests",
           outcome="bad_request; earlier replies arrive; connection serves")  # fmt: skip


@pytest.mark.parametrize("rid", [2**63, 2**64 - 1])
def test_a_rid_outside_int64_is_a_bad_request(daemon, rid):
    # msgpack holds nothing past uint64 or below int64, so these are the out-of-range rids a frame can carry.
    with raw(daemon.socket) as s:
        s.sendall(framed(encode({"op": "ping", "rid": rid})) + p.frame(p.Ping(rid=-(2**63))))
        bad, edge = read_replies(s, 2)
    assert isinstance(bad, p.Error) and bad.code == "bad_request" and bad.rid == 0, bad
    assert "$.rid" in bad.message, bad.message
    assert isinstance(edge, p.Pong) and edge.rid == -(2**63)  # the int64 range itself is fine
    record("hardening_rid_range", hardening="a rid of 2**63 or 2**64-1 (outside int64)", outcome="bad_request naming $.rid")
