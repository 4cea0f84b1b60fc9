"""`coordd run` and `coordd check-config`."""

from __future__ import annotations

import logging
import os
import sys

import click

from coordd import __version__, config


def _setup_logging(level: str) -> None:
    # Under systemd (JOURNAL_STREAM set) journald stamps each line itself.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)


@click.group()
@click.version_option(__version__, prog_name="coordd")
def main() -> None:
    """coordd: the message-delivery daemon for teams of coding agents."""


@main.command()
@click.option("--config", "config_path", envvar="COORDD_CONFIG", type=click.Path(dir_okay=False),
              help="TOML config (env COORDD_CONFIG); without one, 8 inbox agents Agent-1..Agent-8.")  # fmt: skip
def run(config_path: str | None) -> None:
    """Serve until SIGTERM or SIGINT."""
    import asyncio

    import uvloop

    from coordd.daemon import serve
    from coordd.listener import ListenerError
    from coordd.store import StorageError

    try:
        cfg = config.load(config_path)
    except config.ConfigError as e:
        raise click.ClickException(str(e)) from None
    _setup_logging(cfg.daemon.log_level)
    try:
        uvloop.run(serve(cfg))
    except (ListenerError, StorageError) as e:
        logging.getLogger("coordd").error("%s", e)
        sys.exit(1)


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a config file; print a summary, or the error naming the key."""
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{path}: ok, {len(cfg.agents)} agents, socket {cfg.daemon.socket}, db {cfg.store.path}")


if __name__ == "__main__":
    main()
