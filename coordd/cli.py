"""`coordd run`, `coordd check-config` and `coordd install-service`."""

from __future__ import annotations

import logging
import os
import sys

import click

from coordd import __version__, config

SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class OneLineFormatter(logging.Formatter):
    """One line per event, a traceback included, so the journal keeps each event whole.

    For journald the line starts with the syslog priority (<3> error .. <7> debug),
    which journald strips and stores: `journalctl --user -u coordd -p warning` works.
    """

    def __init__(self, fmt: str, journald: bool) -> None:
        super().__init__(fmt)
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record).replace("\n", "\\n")
        return f"<{SYSLOG_PRIORITY.get(record.levelname, 6)}>{line}" if self.journald else line


def _stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=<dev>:<inode> of the journal stream it connects stderr to."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return dev.isdigit() and ino.isdigit() and (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _setup_logging(level: str) -> None:
    journald = _stderr_is_journal()
    # Under systemd journald stamps each line itself.
    fmt = "%(levelname)s %(name)s: %(message)s" if journald else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(fmt, journald))
    logging.basicConfig(level=level.upper(), handlers=[handler])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})  # -h as coordctl takes it
@click.version_option(__version__, prog_name="coordd")
def main() -> None:
    """coordd: the message-delivery daemon for teams of coding agents."""


@main.command()
@click.option(
    "--config",
    "config_path",
    envvar="COORDD_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML config (env COORDD_CONFIG); without one, 8 inbox agents Agent-1..Agent-8.",
)
def run(config_path: str | None) -> None:
    """Serve until SIGTERM or SIGINT (a second one ends it at once); SIGHUP reloads the config."""
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
    log = logging.getLogger("coordd")
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    code = 0
    try:
        loop.run_until_complete(serve(cfg, config_path))
    except (ListenerError, StorageError) as e:
        log.error("%s", e)
        code = 1
    except Exception:
        log.exception("coordd failed")
        code = 1
    # Exit without joining threads: a delivery abandoned at the grace deadline may still be blocked in
    # one (its message is queued in the database for the next start), and it must not hold up the exit.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a config file; print a summary, or the error naming the key."""
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{path}: ok, {len(cfg.agents)} agents, socket {cfg.daemon.socket}, db {cfg.store.path}")


@main.command("install-service")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, resolve_path=True),
    help="The config coordd.service runs with; without one, the embedded default.",
)
@click.option(
    "--dir",
    "dest",
    type=click.Path(file_okay=False),
    help="Where to write the units  [default: $XDG_CONFIG_HOME/systemd/user]",
)
@click.option("--enable", is_flag=True, help="Then run systemctl --user daemon-reload and enable --now both units.")
def install_service(config_path: str | None, dest: str | None, enable: bool) -> None:
    """Write the systemd user units coordd.socket and coordd.service (docs/systemd.md)."""
    import subprocess
    from pathlib import Path

    from coordd import units

    mismatch = None
    if config_path:
        try:
            cfg = config.load(config_path)
        except config.ConfigError as e:
            raise click.ClickException(f"not installing a unit for a broken config: {e}") from None
        mismatch = units.socket_mismatch(config_path, cfg.daemon.socket)
    rendered = units.render(units.installed_bin_dir(), config_path)
    for path in units.install(Path(dest) if dest else units.user_unit_dir(), rendered):
        click.echo(f"wrote {path}")
    if mismatch:
        click.echo(mismatch, err=True)
    commands = [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "coordd.socket", "coordd.service"],
    ]
    if enable:
        for cmd in commands:
            if subprocess.run(cmd).returncode != 0:
                raise click.ClickException(f"`{' '.join(cmd)}` failed")
    else:
        click.echo("next: " + " && ".join(" ".join(cmd) for cmd in commands))
    click.echo("GUI agents: systemctl --user import-environment DISPLAY XAUTHORITY (in the graphical session)")
    click.echo(f"headless host, to run without a login: loginctl enable-linger {os.environ.get('USER', '$USER')}")
    click.echo("logs: journalctl --user -u coordd")


if __name__ == "__main__":
    main()
