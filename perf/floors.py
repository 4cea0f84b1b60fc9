"""The floors that perf/bench.py and perf/bench_inbox.py set coordd against: echo servers, each its own process.

Each is the code of a `python -c` program; its first argument is the Unix socket to serve. Frames are
coordd's: a 4-byte big-endian length, then msgpack.

- ECHO_UVLOOP: decode each frame and encode it back: the least a uvloop + msgspec server costs.
- ECHO_DURABLE: the same, but before it answers a request it commits one SQLite transaction (coordd's schema
  and pragmas: WAL, synchronous=NORMAL) on the event loop, as coordd does: the least a durable answer costs.
  Arguments after the socket: the database path, the mode and, for "deliver", how many rows to store first.
  "insert": each request INSERTs one message row (its `to` and `body`): what a `send` must write.
  "deliver": each request marks its `rows` (default 1) next stored rows delivered: what a fetch must write.
"""

from __future__ import annotations

import sys

ECHO_UVLOOP = r"""
import asyncio, sys, msgspec, uvloop
dec, enc = msgspec.msgpack.Decoder(), msgspec.msgpack.Encoder()
class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, bytearray()
    def data_received(self, data):
        buf = self.buf; buf += data; out = bytearray(); start = 0
        while len(buf) - start >= 4 and len(buf) >= (end := start + 4 + int.from_bytes(buf[start:start + 4], "big")):
            body = enc.encode(dec.decode(buf[start + 4:end])); start = end
            out += len(body).to_bytes(4, "big") + body
        del buf[:start]
        if out: self.t.write(out)
async def main(): await (await asyncio.get_running_loop().create_unix_server(Echo, sys.argv[1])).serve_forever()
uvloop.run(main())
"""

ECHO_DURABLE = r"""
import asyncio, sqlite3, sys, time, msgspec, uvloop
from coordd.model import Record
from coordd.schema import INSERT_MESSAGE, MIGRATIONS
path, db_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
db = sqlite3.connect(db_path, isolation_level=None)
for pragma in ("auto_vacuum = INCREMENTAL", "journal_mode = WAL", "synchronous = NORMAL"):
    db.execute(f"PRAGMA {pragma}")
for m in MIGRATIONS:
    db.executescript(m)
if mode == "deliver":
    db.execute("BEGIN")
    rows = (Record(i, "Puller", "bench message", "regular", time.time()).row() for i in range(1, int(sys.argv[4]) + 1))
    db.executemany(INSERT_MESSAGE, rows)
    db.execute("COMMIT")
dec, enc = msgspec.msgpack.Decoder(), msgspec.msgpack.Encoder()
next_id = 1
def insert(req):
    global next_id
    row = Record(next_id, req.get("to", "Agent-1"), req.get("body", ""), "regular", time.time(), "bench").row()
    next_id += 1
    db.execute("BEGIN IMMEDIATE")
    db.execute(INSERT_MESSAGE, row)
    db.execute("COMMIT")
def deliver(req):
    global next_id
    n, now = req.get("rows", 1), time.time()
    rows = [(now, i) for i in range(next_id, next_id + n)]
    next_id += n
    db.execute("BEGIN IMMEDIATE")
    db.executemany("UPDATE messages SET status = 'delivered', delivered = ? WHERE id = ?", rows)
    db.execute("COMMIT")
commit = insert if mode == "insert" else deliver
class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, bytearray()
    def data_received(self, data):
        buf = self.buf; buf += data; out = bytearray(); start = 0
        while len(buf) - start >= 4 and len(buf) >= (end := start + 4 + int.from_bytes(buf[start:start + 4], "big")):
            req = dec.decode(buf[start + 4:end]); start = end
            commit(req)
            body = enc.encode(req)
            out += len(body).to_bytes(4, "big") + body
        del buf[:start]
        if out: self.t.write(out)
async def main(): await (await asyncio.get_running_loop().create_unix_server(Echo, path)).serve_forever()
uvloop.run(main())
"""


def durable_echo(mode: str = "insert", stored: int = 0) -> list[str]:
    """The command line of a durable echo, for perf/bench.py's echo_server (which puts in "{socket}" and
    "{dir}": its temp dir, beside coordd's, not under /tmp; see bench.WORK_DIR for why)."""
    if mode not in ("insert", "deliver"):
        raise ValueError(f"mode must be insert or deliver, not {mode!r}")
    return [sys.executable, "-c", ECHO_DURABLE, "{socket}", "{dir}/floor.db", mode, str(stored)]


def uvloop_echo() -> list[str]:
    return [sys.executable, "-c", ECHO_UVLOOP, "{socket}"]
