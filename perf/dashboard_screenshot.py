#!/usr/bin/env python3
"""Regenerate docs/dashboard.png: the dashboard of a daemon with some traffic, in headless chromium.

A throw-away coordd (temp socket, database and workspace, [http] on a free loopback port) with a dozen
agents: inbox agents of a small team, one paused, one whose inbox path is blocked by a regular file (its
messages fail: the failures list), a tmux agent whose server does not exist (down), and a pull agent that
fetches now and then. Messages flow at a rate that rises and falls for --seconds while the page is open,
with replies (threads) and some urgent ones; then the page, with its charts on the last 5 minutes, is
saved at its full height. Needs chromium, chromium-driver (`make deps`) and `pip install '.[test]'`.

Usage: python perf/dashboard_screenshot.py [--seconds 150] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tests"))  # the tests' headless chromium

import browser  # noqa: E402

from coordctl import Client, CoordError  # noqa: E402

TEAM = ["Planner", "Backend", "Frontend", "Reviewer", "Tester", "Docs", "Release", "Infra", "Security"]
PAUSED = "Docs"
BLOCKED = "Infra"  # a regular file where its inbox directory should be: each delivery fails
PULLER = "Ops-Queue"
DOWN = "Designer"  # a tmux agent on a tmux server that is not running
TOPICS = [
    ("Review PR #{n}: retry budget for the payment client", "Two nits inline; the backoff cap looks right."),
    ("Flaky test in test_checkout", "test_checkout::test_refund fails 1 in 30 runs on CI, only under load."),
    ("Deploy to staging", "Build {n} is green, deploying to staging now. Shout if you see errors."),
    ("Schema migration plan", "Adding a nullable column first, backfill in batches of 10k, then the index."),
    ("Release notes draft", "Draft for 2.{n} is in docs/release.md, please add your items."),
    (None, "Can you take the next ticket? I am blocked on the API review."),
    (None, "Done: benchmark numbers are in perf/results, p99 down 18%."),
    ("Security review", "The token file is 0600 and the endpoint checks Host; looks good to me."),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)  # noqa: sleep-ok: the poll interval of a deadline-bounded wait
    return value


def config(tmp: Path, port: int) -> Path:
    text = (
        f'[daemon]\nsocket = "{tmp}/run/coordd.sock"\nworkspace = "{tmp}/ws"\n[store]\npath = "{tmp}/coordd.db"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
        "[delivery]\nmax_attempts = 2\nbackoff_initial_ms = 200\nbackoff_max_ms = 500\n"
    )
    for agent in TEAM:
        text += f'[[agents]]\nid = "{agent}"\n'
    text += f'[[agents]]\nid = "{PULLER}"\ntransport = "pull"\n'
    text += f'[[agents]]\nid = "{DOWN}"\ntransport = "tmux"\ntarget = "design:0.0"\nsocket_path = "{tmp}/no-tmux"\n'
    path = tmp / "coordd.toml"
    path.write_text(text)
    return path


def traffic(c: Client, seconds: float, rng: random.Random) -> int:
    """Messages at a rate that rises and falls (5 to 60 a second), a third of them replies; returns how many."""
    sent: list[int] = []
    start = time.monotonic()
    tick = 0.1
    while (elapsed := time.monotonic() - start) < seconds:
        rate = 32 + 27 * math.sin(elapsed / 40 * 2 * math.pi) + (25 if 60 < elapsed < 70 else 0)
        for _ in range(int(rate * tick + rng.random())):  # rate * tick a tick on average
            sender, to = rng.sample([*TEAM, PULLER], 2)
            if rng.random() < 0.04:
                to = DOWN
            subject, body = rng.choice(TOPICS)
            n = len(sent) + 100
            try:
                if sent and rng.random() < 0.3:
                    sent.append(c.reply(rng.choice(sent[-50:]), body.format(n=n), sender=sender))
                else:
                    urgent = rng.random() < 0.08
                    sent.append(
                        c.send(
                            to,
                            body.format(n=n),
                            sender=sender,
                            subject=subject.format(n=n) if subject else None,
                            priority="urgent" if urgent else "regular",
                        )
                    )
            except CoordError:
                pass  # a reply to a message of the paused or down agent may be refused; the traffic goes on
        if rng.random() < 0.2:
            c.inbox(PULLER, limit=rng.randint(1, 8), ack=rng.random() < 0.7)
        time.sleep(tick)  # noqa: sleep-ok: pacing the traffic, not waiting for an outcome
    return len(sent)


def shrink(png: Path) -> None:
    """256 colours are plenty for a page of flat colours: a third of the bytes in the repository. Needs Pillow
    (pyautogui's, in the gui extra); without it the picture stays as the browser saved it."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(png, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="traffic before the screenshot")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1440)
    args = parser.parse_args()
    why = browser.missing()
    if why:
        print(why, file=sys.stderr)
        return 1
    rng = random.Random(17)
    with tempfile.TemporaryDirectory(prefix="coordd-shot-") as tmpname:
        tmp = Path(tmpname)
        (tmp / "run").mkdir(mode=0o700)
        port = free_port()
        blocked = tmp / "ws" / "agent_workspaces" / BLOCKED / "inbox"
        blocked.parent.mkdir(parents=True)
        blocked.write_text("not a directory")
        with open(tmp / "coordd.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "coordd", "run", "--config", str(config(tmp, port))],
                cwd=tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        driver = None
        try:
            token_file = tmp / "run" / "coordd.sock.http-token"
            token = wait_for(lambda: token_file.exists() and token_file.read_text().strip(), 20, "the daemon")
            with Client(str(tmp / "run" / "coordd.sock")) as c:
                c.pause(PAUSED)
                driver = browser.chromium(tmp / "chromium", (args.width, 1000))
                driver.get(f"http://127.0.0.1:{port}/?token={token}")
                n = traffic(c, args.seconds, rng)
                c.send("Backend", "Please look at the failing deploy, logs attached.", sender="operator")
            # Clicked and submitted by script: the mouse stays off the page, so no row shows as hovered.
            driver.execute_script(
                "document.querySelector('.range button[data-window=\"300\"]').click();"
                "document.getElementById('search-text').value = 'deploy';"
                "document.getElementById('search').requestSubmit()"
            )
            rows = "return document.querySelectorAll('#results tbody tr').length"
            try:
                wait_for(lambda: driver.execute_script(rows), 10, "the search's results")
            except RuntimeError:
                print("\n".join(e["message"] for e in driver.get_log("browser")), file=sys.stderr)
                raise
            driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
            height = driver.execute_script("return document.documentElement.scrollHeight")
            # The whole page in one viewport: a window that tall would lose some of it to the window's frame.
            metrics = {"width": args.width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
            shrink(args.out)
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            print(f"{n} messages over {args.seconds:.0f} s; wrote {args.out} ({args.width}x{height})")
            for e in errors:
                print(f"console error: {e['message']}", file=sys.stderr)
            return 1 if errors else 0
        finally:
            if driver is not None:
                driver.quit()
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


if __name__ == "__main__":
    sys.exit(main())
