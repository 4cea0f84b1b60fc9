"""Lock files: an flock held for the daemon's life, with the holder's pid written inside.

Two guard the daemon: one beside the socket (one daemon per socket) and one beside
the database (one writer per database, whatever socket each daemon serves). The
file is never removed, so a lock can never be taken on a file nobody else sees;
it is opened without following a link and kept 0600.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat


class Held(Exception):
    """Another process holds the lock; `holder` is its pid as it wrote it ("?" if unreadable)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def hold(path: str) -> int:
    """Take the lock at path; return its fd, to keep open while serving. Held if another process has it,
    OSError if path cannot be a lock file (`reason` says why)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise Held(text if text.isdigit() else "?") from None  # digits only: it goes into a log line
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)  # one an earlier run left looser
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def reason(e: OSError) -> str:
    """Why a file opened with O_NOFOLLOW could not be used, in words."""
    return "it is a symbolic link, which coordd never follows" if e.errno == errno.ELOOP else e.strerror or str(e)
