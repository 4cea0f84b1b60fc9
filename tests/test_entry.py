"""coordd's entry point (coordd/entry.py): a plain `coordd run` starts without click, anything else is click's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Daemon

from coordd.entry import plain_run


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (["run"], ""),
        (["run", "--config", "c.toml"], "c.toml"),
        (["run", "--config=c.toml"], "c.toml"),
        (["run", "--help"], None),
        (["run", "--config"], None),
        (["run", "--config="], None),
        (["run", "--config", "--help"], None),
        (["run", "c.toml"], None),
        (["check-config"], None),
        ([], None),
    ],
)
def test_only_a_plain_run_skips_click(args: list[str], path: str | None) -> None:
    assert plain_run(args) == path


def test_coordd_run_serves_without_importing_click(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # every import on coordd's stderr, which is its log
    d = Daemon(tmp_path).start()
    assert d.stop() == 0
    imported = set(re.findall(r"^import time:.*\|\s*([\w.]+)$", d.logtext(), re.M))
    assert "coordd.daemon" in imported
    assert not {m for m in imported if m == "click" or m.startswith("click.")}


def test_what_click_refuses_is_still_refused_in_its_words(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "coordd", "run", "--config"]
    directory = subprocess.run([*run, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert directory.returncode == 2 and "is a directory" in directory.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nsocket_typo = 1\n")
    refused = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stderr.startswith("Error: ") and "socket_typo" in refused.stderr
