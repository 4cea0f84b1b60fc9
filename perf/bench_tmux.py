#!/usr/bin/env python3
"""tmux transport benchmark: a Markdown table on stdout, JSON in perf/results/bench_tmux.json.

A private tmux server (tmux -S in a temp dir) with one pane running tests/tmux_reader.py,
a raw-mode input line with bracketed paste that appends each submitted message to a file.
Rows:
- one command round trip: over the warm control-mode connection, and as a fork+exec of
  the tmux client per command (the alternative the issue allows when measured as fast);
- one message through TmuxTransport.deliver (resolve the pane, set-buffer + paste-buffer -p,
  Enter, submission check), over control mode and over a fork per command, with
  enter_delay_ms = 0 so the figures are the transport's own cost; then with the default delay;
- end to end: `send(wait=True)` to a tmux agent of a coordd subprocess (defaults, submission
  check on), next to the same for an inbox agent of the same daemon as the floor.
Nothing asserts on time. Usage: python perf/bench_tmux.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from coordctl import Client, CoordError  # noqa: E402
from coordd.config import TmuxAgent  # noqa: E402
from coordd.model import Record  # noqa: E402
from coordd.transports import tmux_control  # noqa: E402
from coordd.transports.tmux import TmuxTransport  # noqa: E402
from coordd.transports.tmux_control import TmuxError  # noqa: E402

READER = ROOT / "tests" / "tmux_reader.py"
pc = time.perf_counter


class ForkConnection:
    """The Connection interface with one `tmux` client process (fork + exec) per command."""

    def __init__(self, server: tuple[str, ...]) -> None:
        self.argv = [shutil.which("tmux"), *server]

    async def run(self, *argv: str) -> list[str]:
        proc = await asyncio.create_subprocess_exec(*self.argv, *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode:
            raise TmuxError(err.decode().strip(), command_failed=True)
        return out.decode().splitlines()

    async def run_many(self, *commands: tuple[str, ...]) -> list[list[str]]:
        return [await self.run(*c) for c in commands]

    async def send(self, commands):
        fut = asyncio.get_running_loop().create_future()
        fut.set_result((True, []))
        return [fut]


def stats(ms: list[float]) -> dict:
    ms = sorted(ms)
    q = statistics.quantiles(ms, n=100) if len(ms) > 1 else ms * 99
    return {
        "n": len(ms),
        "p50": round(q[49], 3),
        "p95": round(q[94], 3),
        "p99": round(q[98], 3),
        "max": round(ms[-1], 3),
    }


def record(n: int, body: str) -> Record:
    return Record(id=n, agent="T", body=body, priority="regular", created=time.time(), sender="bench")


async def transport_rows(sock: str, target: str, n: int) -> list[dict]:
    rows = []
    server = tmux_control.server_args("", sock)
    conn = tmux_control.acquire(server)
    fork = ForkConnection(server)
    for name, channel, count in (("control mode", conn, n * 5), ("fork + exec per command", fork, n)):
        await channel.run("display-message", "-p", "x")  # warm up
        times = []
        for _ in range(count):
            t = pc()
            await channel.run("display-message", "-p", "-t", target, "#{cursor_y}")
            times.append((pc() - t) * 1000)
        rows.append({"row": f"one tmux command round trip, {name}", **stats(times), "target": "-"})
    ids = iter(range(1, 1 << 30))
    for name, channel, delay in (
        ("control mode", conn, 0),
        ("fork + exec per command", fork, 0),
        ("control mode, default enter_delay_ms", conn, None),
    ):
        keys = {} if delay is None else {"enter_delay_ms": delay}
        t_ = TmuxTransport(TmuxAgent(id="T", target=target, socket_path=sock, header="", **keys))
        t_.conn = channel
        times = []
        for i in range(n):
            body = f"bench message {i}" if i % 2 else f"bench message {i}\nsecond line\nthird: ü $(x) ';'"
            t = pc()
            await t_.deliver([record(next(ids), body)])
            times.append((pc() - t) * 1000)
        label = f"deliver one message (submission check on), {name} (enter_delay_ms={t_.agent.enter_delay_ms})"
        rows.append({"row": label, **stats(times), "target": "<= 15 ms" if delay is None else "-"})
    await tmux_control.release(conn)
    return rows


def daemon_rows(tmp: Path, sock: str, target: str, n: int) -> list[dict]:
    config = tmp / "coordd.toml"
    config.write_text(
        f'[daemon]\nsocket = "{tmp}/coordd.sock"\nworkspace = "{tmp}/ws"\n[store]\npath = "{tmp}/coordd.db"\n'
        f'[[agents]]\nid = "I"\n[[agents]]\nid = "T"\ntransport = "tmux"\ntarget = "{target}"\n'
        f'socket_path = "{sock}"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(tmp / "coordd.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordd", "run", "--config", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    rows = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with Client(f"{tmp}/coordd.sock") as c:
                    c.ping()
                break
            except CoordError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"coordd did not start: {(tmp / 'coordd.log').read_text()}") from None
                time.sleep(0.02)  # noqa: sleep-ok: poll interval of a deadline-bounded wait
        with Client(f"{tmp}/coordd.sock") as c:
            for agent, label, target_ in (("I", "inbox agent (floor)", "-"), ("T", "tmux agent", "<= 15 ms")):
                for i in range(20):
                    c.send(agent, f"warm-up {i}", wait=True, timeout=10)
                times = []
                for i in range(n):
                    t = pc()
                    c.send(agent, f"end to end {i}", sender="bench", wait=True, timeout=10)
                    times.append((pc() - t) * 1000)
                rows.append({"row": f"send(wait=True) through coordd, {label}", **stats(times), "target": target_})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        log.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run, as a smoke check")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_tmux.json"))
    args = ap.parse_args()
    n = 60 if args.quick else 300
    if shutil.which("tmux") is None:
        print("tmux is not installed", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="cdb-"))
    sock = str(tmp / "tmux.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")} | {"LANG": "C.UTF-8"}
    tmux = ["tmux", "-S", sock]
    pid = None
    try:
        out = subprocess.run(
            [
                *tmux,
                "new-session",
                "-d",
                "-P",
                "-F",
                "#{pid}",
                "-s",
                "bench",
                "-x",
                "120",
                "-y",
                "40",
                shlex.join([sys.executable, str(READER), str(tmp / "received.jsonl")]),
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        pid = int(out.stdout)
        deadline = time.monotonic() + 10
        capture = [*tmux, "capture-pane", "-p", "-t", "bench"]
        while not subprocess.run(capture, capture_output=True, text=True).stdout.strip():
            if time.monotonic() > deadline:
                raise RuntimeError("the reader did not start")
            time.sleep(0.02)  # noqa: sleep-ok: poll interval of a deadline-bounded wait
        rows = asyncio.run(transport_rows(sock, "bench:0.0", n))
        rows += daemon_rows(tmp, sock, "bench:0.0", n)
        received = sum(1 for _ in open(tmp / "received.jsonl", encoding="utf-8"))
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    tmux_version = subprocess.run(["tmux", "-V"], capture_output=True, text=True).stdout.strip()
    info = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tmux": tmux_version,
        "n": n,
        "quick": args.quick,
        "messages_received_by_the_pane": received,
    }
    print(
        f"coordd tmux bench: {info['cpus']} CPUs, Python {info['python']}, {tmux_version}, {n} messages per row, "
        f"{received} messages received by the pane\n"
    )
    print("| row | n | p50 ms | p95 ms | p99 ms | max ms | target |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['n']} | {r['p50']} | {r['p95']} | {r['p99']} | {r['max']} | {r['target']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    print(f"\nJSON: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
