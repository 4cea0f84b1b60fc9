#!/usr/bin/env python3
"""gui transport benchmark: a Markdown table on stdout, JSON in perf/results/bench_gui.json.

On a private Xvfb with one xterm running `cat >> FILE` (pasting with ctrl+shift+v), each row
delivers N messages one after the other and times each one:

- coordd warm: `send(wait=True)` to a gui agent of a running coordd subprocess (pyautogui loaded,
  X connections open, the clipboard owned in-process), default settle delays; then with every
  delay at 0 (the transport's own cost: click, paste confirmed by the clipboard, submit);
- the old way: a fresh Python process per message that imports pyautogui and pyperclip, copies
  the text (pyperclip runs xclip), clicks, pastes, submits, with the same default delays;
- floor: `send(wait=True)` to an inbox agent of the same daemon (socket + commit + file write).

Each row also counts the messages that reached the window's file. Nothing asserts on time; the
target (p50 <= 50 ms with default delays) is shown as met or not.
Usage: python perf/bench_gui.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

XRM = "XTerm*VT100.translations: #override Ctrl Shift <Key>V: insert-selection(CLIPBOARD)"
WINDOW = (20, 20, 262, 152)  # xterm origin, and the point the agent clicks
TARGET_P50_MS = 50.0
pc = time.perf_counter

OLD_WAY = r"""
import sys, time
import pyautogui, pyperclip
pyautogui.PAUSE = 0
x, y, text = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
pyperclip.copy(text)
pyautogui.click(x, y); time.sleep(0.010)
pyautogui.hotkey("ctrl", "shift", "v"); time.sleep(0.010)
pyautogui.press("enter"); time.sleep(0.010)
"""


def stats(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "max_ms": round(ms[-1], 2),
    }


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)  # noqa: sleep-ok: poll interval of a deadline-bounded wait
    return value


def start_x(tmp: Path) -> tuple[subprocess.Popen, subprocess.Popen, Path, dict]:
    r, w = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x1024x24", "-nolisten", "tcp", "-noreset"],
        pass_fds=(w,),
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    (tmp / "xauthority").touch()
    env = {**os.environ, "DISPLAY": f":{number}", "XAUTHORITY": str(tmp / "xauthority"), "LANG": "C.UTF-8"}
    out = tmp / "window.txt"
    out.touch()
    xterm = subprocess.Popen(
        [
            "xterm",
            "-u8",
            "-T",
            "bench",
            "-geometry",
            f"80x20+{WINDOW[0]}+{WINDOW[1]}",
            "-xrm",
            XRM,
            "-e",
            "sh",
            "-c",
            'exec cat >> "$0"',
            str(out),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tree = lambda: subprocess.run(["xwininfo", "-root", "-tree"], env=env, capture_output=True, text=True).stdout  # noqa: E731
    wait_for(lambda: '"bench"' in tree(), 15, "the xterm window")
    return xvfb, xterm, out, env


def lines(out: Path) -> int:
    return out.read_text(errors="replace").count("\n")


def daemon_rows(tmp: Path, out: Path, env: dict, n: int) -> list[dict]:
    agent = f'transport = "gui"\nx = {WINDOW[2]}\ny = {WINDOW[3]}\npaste_hotkey = "ctrl+shift+v"\n'
    config = tmp / "coordd.toml"
    config.write_text(
        f'[daemon]\nsocket = "{tmp}/coordd.sock"\nworkspace = "{tmp}/ws"\n[store]\npath = "{tmp}/coordd.db"\n'
        f'[gui]\nheader = ""\n[[agents]]\nid = "gui"\n{agent}'
        f'[[agents]]\nid = "gui-no-delays"\n{agent}click_settle_ms = 0\npaste_settle_ms = 0\nsubmit_settle_ms = 0\n'
        '[[agents]]\nid = "inbox"\n'
    )
    with open(tmp / "coordd.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordd", "run", "--config", str(config)],
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    rows = []
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"coordd exited: {(tmp / 'coordd.log').read_text()}")
            try:
                with Client(f"{tmp}/coordd.sock") as c:
                    return all(a.healthy for a in c.status().agents)
            except CoordError:
                return False

        wait_for(up, 20, "coordd")
        with Client(f"{tmp}/coordd.sock") as c:
            for agent_id, label in [
                ("gui", "coordd warm, default delays (10/10/10 ms)"),
                ("gui-no-delays", "coordd warm, delays 0 (transport's own cost)"),
                ("inbox", "floor: inbox agent, same daemon"),
            ]:
                before = lines(out)
                c.send(agent_id, "warm-up", wait=True, timeout=10)
                times = []
                for i in range(n):
                    t = pc()
                    c.send(agent_id, f"message {i} to {agent_id}", wait=True, timeout=10)
                    times.append((pc() - t) * 1000)
                arrived = lines(out) - before - 1 if agent_id != "inbox" else n
                rows.append({"row": label, **stats(times), "arrived": arrived})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    return rows


def old_way_row(out: Path, env: dict, n: int) -> dict:
    before = lines(out)
    times = []
    for i in range(n):
        t = pc()
        subprocess.run(
            [sys.executable, "-c", OLD_WAY, str(WINDOW[2]), str(WINDOW[3]), f"old way {i}"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        times.append((pc() - t) * 1000)
    arrived = wait_for(lambda: (lines(out) - before >= n and n) or None, 5, "old-way messages") if n else 0
    return {
        "row": "old way: fresh process per message (pyautogui + pyperclip), same delays",
        **stats(times),
        "arrived": arrived,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 messages per row instead of 100")
    ap.add_argument("--out", default=str(ROOT / "perf" / "results" / "bench_gui.json"))
    args = ap.parse_args()
    missing = [t for t in ("Xvfb", "xterm", "xwininfo", "xclip") if shutil.which(t) is None]
    if missing:
        print(f"bench_gui: needs {', '.join(missing)} (make deps installs them)", file=sys.stderr)
        return 2
    n = 20 if args.quick else 100
    with tempfile.TemporaryDirectory(prefix="coordd-bench-gui-") as d:
        tmp = Path(d)
        xvfb, xterm, out, env = start_x(tmp)
        try:
            rows = daemon_rows(tmp, out, env, n)
            rows.insert(2, old_way_row(out, env, max(10, n // 5)))
        finally:
            xterm.terminate()
            xterm.wait(10)
            xvfb.terminate()
            xvfb.wait(10)
    info = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"coordd gui bench: {info['cpus']} CPUs, Python {info['python']}, Xvfb + xterm, per message, ms\n")
    print("| row | n | p50 | p95 | mean | max | reached the window |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = ("row", "n", "p50_ms", "p95_ms", "mean_ms", "max_ms", "arrived")
        print("| " + " | ".join(str(r[k]) for k in cells) + " |")
    met = rows[0]["p50_ms"] <= TARGET_P50_MS
    print(
        f"\ntarget p50 <= {TARGET_P50_MS:g} ms with default delays: {'met' if met else 'NOT met'} "
        f"({rows[0]['p50_ms']} ms); old way / warm coordd p50: {rows[2]['p50_ms'] / rows[0]['p50_ms']:.1f}x"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"machine": info, "target_p50_ms": TARGET_P50_MS, "rows": rows}, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
