"""Access: who may connect, and the socket's directory.

tests/test_core.py covers the basics (socket 0600 in a 0700 directory; another
uid refused). Here: the allow-lists daemon.allow_uids / allow_gids, applied at
start and at reload, and a socket directory that is too open or not ours.
Other uids are real: a forked child calls setresuid (the venv need not be
readable by them), so only SO_PEERCRED stands between them and the daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path

import pytest
from conftest import Daemon, wait_until, write_config
from figures import record
from test_core import _ping_as

OTHER_UID, OTHER_GID = 43210, 43210  # nobody's in particular: numeric ids need no passwd entry
GROUP_UID, GROUP_GID = 43211, 43299


@pytest.fixture
def open_daemon():
    """Factory: a daemon in a directory other uids can reach; the socket's own modes opened up too."""
    if os.getuid() != 0:
        pytest.skip("needs root to connect as other uids")
    made: list[tuple[Daemon, Path]] = []

    def make(**daemon_keys) -> Daemon:
        tmp = Path(tempfile.mkdtemp(prefix="coordd-acl-"))  # pytest's tmp_path is 0700: no other uid gets in
        tmp.chmod(0o755)
        d = Daemon(tmp, daemon=daemon_keys)
        made.append((d, tmp))
        d.start()
        os.chmod(os.path.dirname(d.socket), 0o755)
        os.chmod(d.socket, 0o666)
        return d

    yield make
    for d, tmp in made:
        d.kill()
        shutil.rmtree(tmp)


def test_allow_lists_let_listed_uids_and_gids_in(open_daemon):
    d = open_daemon(allow_uids=[OTHER_UID], allow_gids=[GROUP_GID])
    assert _ping_as(d.socket, OTHER_UID, OTHER_GID).startswith("Pong("), "a uid in allow_uids"
    assert _ping_as(d.socket, GROUP_UID, GROUP_GID).startswith("Pong("), "a primary gid in allow_gids"
    refused = _ping_as(d.socket, GROUP_UID, GROUP_GID + 1)
    assert refused.startswith(f"forbidden uid {GROUP_UID} may not use this coordd"), refused
    assert "daemon.allow_uids" in refused  # says what to change
    with d.client() as c:
        assert c.ping()
    record("access_allow_lists", refused=1, allowed=2)


def test_reload_applies_a_changed_allow_list(open_daemon):
    d = open_daemon()
    assert _ping_as(d.socket, OTHER_UID, OTHER_GID).startswith("forbidden")
    sections = {
        "daemon": {"socket": d.socket, "workspace": str(d.workspace), "allow_uids": [OTHER_UID]},
        "store": {"path": d.db},
    }
    write_config(d.config, sections, d.agents)
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _ping_as(d.socket, OTHER_UID, OTHER_GID).startswith("Pong("), 10, "the new allow-list")
    write_config(d.config, {**sections, "daemon": {**sections["daemon"], "allow_uids": []}}, d.agents)
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _ping_as(d.socket, OTHER_UID, OTHER_GID).startswith("forbidden"), 10, "the uid removed again")


def test_readable_socket_directory_is_tightened(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    run.chmod(0o755)  # others may list it, not write to it (one they may write to is refused: test_client_trust)
    d = Daemon(tmp_path).start()
    try:
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    finally:
        d.kill()


def test_socket_directory_of_another_uid_is_refused(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to give the directory to another uid")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    os.chown(run, OTHER_UID, OTHER_GID)
    d = Daemon(tmp_path)
    d.start(expect_ready=False)
    assert d.proc.wait(20) != 0
    assert f"belongs to uid {OTHER_UID}" in d.logtext() and "daemon.socket" in d.logtext()
    assert not os.path.exists(d.socket)
