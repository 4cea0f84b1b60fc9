"""The `coordd` command's entry point: `coordd run` starts without click.

click and the command tree built on it are a fifth of the instructions of a start to READY=1 beyond the
imports the daemon cannot do without (perf/README.md), and `coordd run`, what systemd starts, takes one
option. So a plain `coordd run [--config PATH]` is served from here; anything else (another command,
--help, an option click would refuse, a config that does not load) goes to coordd.cli, which parses it
and words any error as it always has.
"""

from __future__ import annotations

import os
import sys


def plain_run(args: list[str]) -> str | None:
    """The config path of a plain `run` ("" for none given), or None: not one, click parses it."""
    if args == ["run"]:
        return ""
    if len(args) == 3 and args[:2] == ["run", "--config"] and args[2] and not args[2].startswith("-"):
        return args[2]
    if len(args) == 2 and args[0] == "run" and args[1].startswith("--config=") and args[1] != "--config=":
        return args[1].removeprefix("--config=")
    return None


def main() -> None:
    path = plain_run(sys.argv[1:])
    if path is not None:
        from coordd import config

        path = path or os.environ.get("COORDD_CONFIG") or config.default_config()
        # A directory is refused by click, in its words.
        if path is None or not os.path.isdir(path):
            try:
                cfg = config.load(path)
            except config.ConfigError:
                pass  # coordd.cli loads it again and words the error
            else:
                from coordd.daemon import serve_until_stopped

                serve_until_stopped(cfg, path)
    from coordd.cli import main as cli

    cli()
