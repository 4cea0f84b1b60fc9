"""Whether a socket is served by our own coordd: checked once per connection, before anything is sent.

Anyone may create /tmp/coordd-<uid> (the socket's directory without XDG_RUNTIME_DIR) before coordd does,
then listen there and read what clients send. So a client first checks that the socket's directory
belongs to a trusted uid and that no one else may write to it (else it does not even connect), then,
once connected, that the process that listens runs as a trusted uid (SO_PEERCRED). The second check is
the one that counts, as the directory could change in between; the first names who made the directory.

Trusted: our own uid, root (who can read our memory anyway), and the uids the caller allows (a daemon
run as another user on purpose, with us in its daemon.allow_uids).
"""

from __future__ import annotations

import _socket  # not `socket`: its enums cost more than the rest of a send (see perf/README.md)
import os
import stat
import struct
from typing import TYPE_CHECKING

from coordctl.paths import allow_uids_from_env

if TYPE_CHECKING:
    from collections.abc import Iterable

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def trusted_uids(allow_uids: Iterable[int] | None) -> frozenset[int]:
    """Ours, root's, and ``allow_uids`` (None: those in ``$COORDD_ALLOW_UIDS``)."""
    return frozenset((os.getuid(), 0, *(allow_uids_from_env() if allow_uids is None else allow_uids)))


def directory_problem(socket_path: str, trusted: frozenset[int]) -> str | None:
    """Why the socket's directory cannot be trusted, or None. Raises OSError if it cannot be read."""
    directory = os.path.dirname(socket_path) or "."
    st = os.stat(directory)
    if st.st_uid not in trusted:
        return (
            f"socket directory {directory} belongs to {user(st.st_uid)}, not to you ({user(os.getuid())}): "
            "another user may have made it to read what clients send, so nothing was sent. Have root remove "
            "it and restart coordd, or give coordd a private directory (set XDG_RUNTIME_DIR, or daemon.socket "
            "and COORDD_SOCKET); if that user's coordd is meant to serve you, allow the uid (allow_uids=[...], "
            "or COORDD_ALLOW_UIDS for coordctl)"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"socket directory {directory} is writable by group or others (mode {mode:04o}): anyone could have "
            f"replaced the socket, so nothing was sent. `chmod 700 {directory}` and restart coordd, or give it "
            "a private directory"
        )
    return None


def peer_problem(sock: _socket.socket, socket_path: str, trusted: frozenset[int]) -> str | None:
    """Why the process listening on a connected socket cannot be trusted, or None."""
    pid, uid, _ = _UCRED.unpack(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED.size))
    if uid in trusted:
        return None
    return (
        f"the process listening on {socket_path} (pid {pid}) runs as {user(uid)}, not as you "
        f"({user(os.getuid())}): it is not your coordd, so nothing was sent. Stop it and remove the socket, "
        f"then start coordd; if that user's coordd is meant to serve you, allow the uid (allow_uids=[{uid}], "
        f"or COORDD_ALLOW_UIDS={uid} for coordctl)"
    )


def user(uid: int) -> str:
    """``uid N (name)``, for an error message; ``uid N`` if it has no name."""
    import pwd  # only to word an error

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"
