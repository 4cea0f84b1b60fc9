"""Where the daemon's socket lives.

The daemon imports ``runtime_socket_path`` for its own default (its config
value wins over it); clients use ``default_socket_path``, which also honours
``$COORDD_SOCKET`` so one environment variable points every client elsewhere,
and ``$COORDD_ALLOW_UIDS`` to trust a daemon run as another user there.
"""

from __future__ import annotations

import os


def runtime_socket_path() -> str:
    """``$XDG_RUNTIME_DIR/coordd/coordd.sock``, else ``/tmp/coordd-<uid>/coordd.sock``.

    XDG_RUNTIME_DIR is per-user, mode 0700 and cleared at logout, which is
    what a socket wants; the /tmp fallback (no systemd login session, e.g. in
    a container) keeps the uid in the name so users do not collide.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "coordd", "coordd.sock")
    return f"/tmp/coordd-{os.getuid()}/coordd.sock"


def socket_path_from_env() -> str | None:
    """``$COORDD_SOCKET`` if set and non-empty."""
    return os.environ.get("COORDD_SOCKET") or None


def default_socket_path() -> str:
    """The socket a client connects to when it is not given one."""
    return socket_path_from_env() or runtime_socket_path()


def allow_uids_from_env() -> list[int]:
    """The uids in ``$COORDD_ALLOW_UIDS`` (separated by commas or spaces): daemons of these users are trusted."""
    value = os.environ.get("COORDD_ALLOW_UIDS", "")
    try:
        return [int(uid) for uid in value.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"COORDD_ALLOW_UIDS={value!r}: give numeric uids separated by commas or spaces") from None
