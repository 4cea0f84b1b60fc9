"""The listening socket: a private directory, one daemon per socket, stale sockets replaced.

A lock file beside the socket (flock, held for the daemon's life) decides who
owns the socket, so two daemons starting at once cannot both bind. The loser
exits with a clear message; the winner removes a socket file a dead daemon left.
(One daemon per database is the store's own lock: see Store.open.)

Under socket activation systemd owns the socket: `adopt` takes the inherited
listening socket as it is (no chmod, no unlink, ever), and the lock file goes
beside the path that socket is bound to, so two daemons still cannot serve it.
"""

from __future__ import annotations

import os
import socket
import stat

from coordctl import trust
from coordd import lockfile

# Connections waiting to be accepted. The event loop listens again with its own backlog (100 unless told),
# so the daemon passes this one on too: a burst of connects then waits instead of failing with EAGAIN.
BACKLOG = 512


class ListenerError(Exception):
    pass


def private_dir(path: str) -> None:
    """Create (or tighten) the socket's directory: ours, mode 0700.

    One that others could write to is refused rather than tightened: they may already have put a socket or
    a link to another file (as the lock file) in it. Clients check the same (coordctl.trust).
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise ListenerError(
            f"socket directory {path} belongs to {trust.user(st.st_uid)}, not to us ({trust.user(os.getuid())}): "
            "another user may have made it to receive what clients send. Have it removed, or choose another "
            "daemon.socket"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ListenerError(
            f"socket directory {path} is writable by group or others (mode {mode:04o}): anyone could have put "
            f"files in it. Check what is in it and `chmod 700 {path}`, or choose another daemon.socket"
        )
    if mode != 0o700:
        os.chmod(path, 0o700)


def lock(socket_path: str) -> int:
    """Take the daemon lock for socket_path; return its fd (keep it open while serving)."""
    lock_path = socket_path + ".lock"
    try:
        return lockfile.hold(lock_path)
    except lockfile.Held as e:
        raise ListenerError(
            f"another coordd (pid {e.holder}) is already serving {socket_path}: stop it first, or give this one "
            "another daemon.socket"
        ) from None
    except OSError as e:
        raise ListenerError(f"cannot use the lock file {lock_path}: {lockfile.reason(e)}") from None


def bind(socket_path: str) -> socket.socket:
    """A listening socket at socket_path, mode 0600. Call with the lock held."""
    private_dir(os.path.dirname(socket_path) or ".")
    try:
        os.unlink(socket_path)  # we hold the lock, so whatever is there was left by a dead daemon
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)  # no window in which the socket is reachable with looser permissions
        try:
            sock.bind(socket_path)
        finally:
            os.umask(old)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise ListenerError(f"cannot listen on {socket_path}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def adopt(fds: list[tuple[int, str]]) -> socket.socket:
    """The listening socket among those systemd passed (the one named "coordd" if several)."""
    fd, name = next(((fd, n) for fd, n in fds if n == "coordd"), fds[0])
    for other, _ in fds:
        if other != fd:
            os.close(other)  # coordd serves one socket; a stray one must not stay open unserved
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise ListenerError(f"inherited fd {fd} ({name}) is not a socket: {e.strerror}") from None
    if (
        sock.family != socket.AF_UNIX
        or sock.type != socket.SOCK_STREAM
        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ):
        sock.detach()
        raise ListenerError(
            f"inherited fd {fd} ({name}) is not a listening Unix stream socket: coordd.socket needs "
            "ListenStream=<path> and Accept=no"
        )
    sock.setblocking(False)
    return sock


def adopted_path(sock: socket.socket, fallback: str) -> str:
    """The file-system path an inherited socket is bound to (fallback for an abstract or unnamed one)."""
    name = sock.getsockname()
    return name if isinstance(name, str) and name.startswith("/") else fallback
