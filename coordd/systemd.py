"""systemd integration without libsystemd: readiness notification, the watchdog, socket activation.

Both protocols are tiny, so (like gunicorn's systemd.py and systemd's
notify-selfcontained-example.py) this speaks them directly:

- sd_notify: one datagram of KEY=VALUE lines to the Unix socket named by
  $NOTIFY_SOCKET (a path, or an abstract name written with a leading '@').
- socket activation: $LISTEN_PID is our pid and $LISTEN_FDS sockets start at fd 3,
  named by $LISTEN_FDNAMES (colon-separated).

All variables are removed from the environment once read, so the processes that
transports start (tmux, xclip) never act on them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger("coordd.systemd")

SD_LISTEN_FDS_START = 3
STATUS_REFRESH_S = 2.0  # how often STATUS= is recomputed (sent only when it changed)


def listen_fds() -> list[tuple[int, str]]:
    """The sockets systemd passed to this process, as (fd, name); [] when none were."""
    env = os.environ
    pid, count, names = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", ""), env.pop("LISTEN_FDNAMES", "")
    if not (pid.isdigit() and count.isdigit()) or int(pid) != os.getpid():
        return []  # not for us: e.g. inherited from a parent that was itself socket-activated
    labels = names.split(":") if names else []
    fds = []
    for i, fd in enumerate(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))):
        try:
            os.set_inheritable(fd, False)  # ours alone, not the children's
        except OSError:
            log.warning("LISTEN_FDS names fd %d, which is not open; ignoring it", fd)
            continue
        fds.append((fd, labels[i] if i < len(labels) else "unknown"))
    return fds


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """sd_notify. Without $NOTIFY_SOCKET (not under systemd) every call is a no-op."""

    def __init__(self) -> None:
        address = os.environ.pop("NOTIFY_SOCKET", "")
        self.address = ""  # where to send, while self.sock is set
        self.sock: socket.socket | None = None
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        if address.startswith(("/", "\0")):
            self.address = address
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)  # a full receive queue drops a notification, never stalls the loop
        elif address:
            log.warning("NOTIFY_SOCKET=%r is not a Unix socket address; not notifying systemd", address)

    def __bool__(self) -> bool:
        return self.sock is not None

    def notify(self, *lines: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as e:
            log.debug("sd_notify %s: %s", lines[0], e)


def watchdog_period() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when systemd wants none."""
    usec, pid = os.environ.pop("WATCHDOG_USEC", ""), os.environ.pop("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


async def watchdog(notifier: Notifier, commit: Callable[[], asyncio.Future], period: float) -> None:
    """Ping only while both the event loop and the store writer work.

    Each round submits an empty write through the group-committing writer (`commit()`: the
    store's `write([])`). The writer runs on the loop thread, so a hung loop or a hung writer
    means no commit, and no ping: systemd then restarts us (Restart=on-failure).
    """
    loop = asyncio.get_running_loop()
    probe: asyncio.Future | None = None
    while True:
        started = loop.time()
        if probe is None or probe.done():
            probe = commit()
        # asyncio.wait, not wait_for: it never cancels the write's future (the writer resolves it later),
        # and on Python 3.11 wait_for can swallow a cancellation that coincides with the result.
        await asyncio.wait([probe], timeout=period)
        if not probe.done():
            log.error("the store writer did not commit within %.1f s: withholding the watchdog ping", period)
            continue  # keep waiting for the same write
        if probe.exception() is not None:
            log.error("the store writer fails (%s): withholding the watchdog ping", probe.exception())
        else:
            notifier.notify("WATCHDOG=1")
        await asyncio.sleep(max(0.0, started + period - loop.time()))  # noqa: sleep-ok: the ping period


async def refresh_status(notifier: Notifier, summary: Callable[[], str]) -> None:
    """Keep `systemctl --user status coordd` showing a current one-line queue summary."""
    last = summary()  # as sent with READY=1
    while True:
        await asyncio.sleep(STATUS_REFRESH_S)  # noqa: sleep-ok: a refresh period for a display, not a wait
        text = summary()
        if text != last:
            notifier.notify(f"STATUS={text}")
            last = text
