"""`coordd run`, `coordd check-config` and `coordd install-service`."""

from __future__ import annotations

import os

import click

from coordd import __version__, config


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
    help="TOML config (env COORDD_CONFIG); without one, $XDG_CONFIG_HOME/coordd/coordd.toml if it exists "
    "(`coordd init` writes it), else 8 inbox agents Agent-1..Agent-8.",
)
def run(config_path: str | None) -> None:
    """Serve until SIGTERM or SIGINT (a second one ends it at once); SIGHUP reloads the config."""
    from coordd.daemon import serve_until_stopped

    config_path = config_path or config.default_config()
    try:
        cfg = config.load(config_path)
    except config.ConfigError as e:
        raise click.ClickException(str(e)) from None
    serve_until_stopped(cfg, config_path)


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False), required=False)
def check_config(path: str | None) -> None:
    """Validate a config file (default: the one `coordd run` reads); print a summary, or the error naming the key."""
    path = path or os.environ.get("COORDD_CONFIG") or str(config.default_path())
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{path}: ok, {len(cfg.agents)} agents, socket {cfg.daemon.socket}, db {cfg.store.path}")


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Where to write it  [default: $XDG_CONFIG_HOME/coordd/coordd.toml, where `coordd run` looks]",
)
@click.option("--discover", is_flag=True, help="Propose an agent for each tmux pane running an agent CLI.")
@click.option(
    "--program",
    "programs",
    multiple=True,
    metavar="NAME",
    help="With --discover, also an agent CLI of this name (repeatable); known: claude, codex, gemini, aider, "
    "cursor-agent.",
)
@click.option(
    "--tmux-socket",
    "sockets",
    multiple=True,
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="With --discover, also the tmux server at this socket (tmux -S; repeatable). Those in "
    "$TMUX_TMPDIR/tmux-UID and /tmp/tmux-UID are always asked.",
)
def init(config_path: str | None, discover: bool, programs: tuple[str, ...], sockets: tuple[str, ...]) -> None:
    """Write a commented starting config; never over an existing file."""
    from pathlib import Path

    from coordctl import human
    from coordd import starter

    panes = []
    if discover:
        from coordd.discover import AGENT_PROGRAMS, find

        panes = find([*AGENT_PROGRAMS, *programs], list(sockets))
        if panes:
            click.echo(f"found {len(panes)} agent pane{'s' if len(panes) != 1 else ''}:")
            for p in panes:  # names from tmux: printed so that none can drive the terminal
                human.echo(f"  {p.id}: {p.program} in {p.target} (pane {p.pane_id}, tmux server {p.server()})")
                if p.target == p.pane_id:
                    human.echo(
                        f"    session {p.session!r} cannot be named in a target: its pane id it is, which a "
                        "tmux restart changes (rename the session, then set the target)"
                    )
        else:
            names = ", ".join([*AGENT_PROGRAMS, *programs])
            click.echo(f"found no tmux pane running an agent CLI ({names}): writing the default inbox agents")
    path = Path(config_path) if config_path else config.default_path()
    try:
        starter.write(path, starter.render(panes))
    except starter.InitError as e:
        raise click.ClickException(str(e)) from None
    agents = f"{len(panes)} tmux agents" if panes else "8 inbox agents"
    click.echo(
        f"wrote {path} ({agents}); check it with `coordd check-config{'' if config_path is None else ' ' + str(path)}`"
    )
    if config_path is not None:
        click.echo(f"check it with `coordd check-config {path}`; run with `coordd run --config {path}`")


@main.command("install-service")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, resolve_path=True),
    help="The config coordd.service runs with; without one, what `coordd run` reads by default.",
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
