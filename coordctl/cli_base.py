"""The ``coordctl`` command line's root: the global options, what every subcommand shares, and ``send``.

Exit codes: 0 ok; 1 the daemon refused, or coordctl refused a socket that is
not its own daemon's (``error [code]: message`` on stderr, e.g. ``untrusted_socket``);
2 usage; 3 the daemon is not reachable (one line on stderr saying how to start
it); 4 (`status` only) some agent's transport is down or it has failed messages.
With ``--json`` each command prints one JSON document: the daemon's reply with every
field (defaults included), minus the wire-only ``rid`` and ``type``.

``coordctl send`` is the command agents run most, so it is the one built here; the other ~40
subcommands live in coordctl/cli.py, imported only when one of them (or the list of them, for
--help and shell completion) is asked for: building them all cost more than sending does
(perf/README.md). Imports are kept to what every command needs, so that it starts fast: no
asyncio, no json module (msgspec.json), no datetime outside ISO parsing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn, get_args

import click
import msgspec

from coordctl import __version__, human, protocol
from coordctl.client import Client
from coordctl.errors import CoordError, DaemonUnavailable
from coordctl.operations import expect

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_UNHEALTHY = 4  # `status`: an agent is down or has failed messages

# Seconds to wait for a connect or a reply before giving up (exit 3): a wedged
# daemon must not hang the agents that call us. `send --wait` waits longer.
IO_TIMEOUT = 60.0


class BadInput(click.ClickException):
    """Input that is not the user's command line (a batch file line) but is a usage error all the same."""

    exit_code = EXIT_USAGE

    def format_message(self) -> str:
        return human.visible(self.message)  # it may quote the file's text


def report(as_json: bool, code: str, message: str, exit_code: int) -> int:
    """Say on stderr why coordctl failed, as text or (--json) a JSON object; returns the exit code."""
    if as_json:
        click.echo(human.json_escaped(msgspec.json.encode({"code": code, "message": message})), err=True)
    else:
        human.echo(f"error [{code}]: {message}", err=True)
    return exit_code


class State:
    """What the global options decide, handed to every subcommand."""

    def __init__(self, socket_path: str | None, as_json: bool) -> None:
        self.socket_path = socket_path
        self.json = as_json

    def client(self, timeout: float | None = IO_TIMEOUT) -> Client:
        try:
            client = Client(self.socket_path, timeout=timeout)
        except ValueError as e:  # a malformed $COORDD_ALLOW_UIDS
            raise click.UsageError(str(e)) from None
        click.get_current_context().call_on_close(client.close)
        return client


pass_state = click.make_pass_decorator(State)

# --- output --------------------------------------------------------------------


# Fields that hold a time (unix seconds): JSON output adds FIELD_iso beside each, ISO 8601 with the offset.
TIME_FIELDS = frozenset(("created", "delivered", "read_at", "acked_at", "lease_until", "started", "finished", "time"))


def plain(obj: object) -> object:
    """Builtins for JSON output: every field, defaults too (the wire omits
    them), but not the wire-only ``rid`` and ``type``; beside each time (unix
    seconds, kept as it is) FIELD_iso, the same time in ISO 8601 with its offset
    (null when the time is)."""
    if isinstance(obj, msgspec.Struct):
        out = {}
        for f in obj.__struct_fields__:
            if f != "rid":
                value = out[f] = plain(getattr(obj, f))
                if f in TIME_FIELDS:
                    out[f + "_iso"] = None if value is None else human.iso(value)  # type: ignore[arg-type]
        return out
    if isinstance(obj, list):
        return [plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def emit_json(obj: object) -> None:
    click.echo(human.json_escaped(msgspec.json.encode(plain(obj))))


def read_body(message: str) -> str:
    """The message argument, or all of stdin for ``-``."""
    if message != "-":
        return message
    try:
        return sys.stdin.buffer.read().decode()
    except UnicodeDecodeError as e:
        raise BadInput(f"stdin is not UTF-8: {e}") from None


# --- shell completion ---------------------------------------------------------------

COMPLETE_TIMEOUT = 0.5  # seconds: a shell waits for this at the Tab key


def complete_agent(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Agent ids (and @GROUP for `send`) from the running daemon, for the shell's Tab. Nothing, quietly
    and at once, when the daemon does not answer: a completion must never print an error or hang."""
    socket_path = ctx.find_root().params.get("socket_path")
    try:
        with Client(socket_path, timeout=COMPLETE_TIMEOUT) as client:
            found = client.agents()
    except Exception:  # any failure: no candidates, as for a word nothing matches
        return []
    names = [a.id for a in found]
    if ctx.command.name == "send" and incomplete.startswith("@"):
        names = sorted({f"@{g}" for a in found for g in a.groups})
    return [n for n in names if n.startswith(incomplete)]


# --- commands --------------------------------------------------------------------

priority_option = click.option(
    "--priority",
    type=click.Choice(["regular", "urgent"]),
    default="regular",
    show_default=True,
    help="Urgent messages are delivered before regular ones.",
)
sender_option = click.option("--sender", help="Who the message is from, as the recipient will see it.")
kind_option = click.option("--kind", help="A free-form message kind, e.g. task or review.")
tag_option = click.option("--tag", "tags", multiple=True, help="A tag; repeat for more.")
subject_option = click.option("--subject", help="A one-line subject, shown in the recipient's header.")


class LazyGroup(click.Group):
    """The root group: ``send`` is built with it, the other subcommands when one of them, or their list,
    is first asked for (importing coordctl.cli adds them to this group)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            import coordctl.cli  # noqa: F401  # its commands add themselves
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        import coordctl.cli  # noqa: F401

        return super().list_commands(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    envvar="COORDD_SOCKET",
    help="The daemon's socket  [default: $COORDD_SOCKET, else $XDG_RUNTIME_DIR/coordd/coordd.sock]. It must "
    "be yours: its directory and the daemon belong to you or root (or a uid in $COORDD_ALLOW_UIDS).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.version_option(__version__, "-V", "--version", prog_name="coordctl")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None, as_json: bool) -> None:
    """Talk to coordd, the message-delivery daemon for AI coding agents."""
    ctx.obj = State(socket_path, as_json)


@cli.command()
@click.argument("agent", shell_complete=complete_agent)
@click.argument("message")
@priority_option
@sender_option
@kind_option
@tag_option
@click.option("--key", help="Idempotency key: sending again with the same key returns the first id.")
@subject_option
@click.option("--reply-to", type=int, metavar="ID", help="The message this one answers: it joins ID's thread.")
@click.option("--wait", is_flag=True, help="Return once delivered; exit 1 if delivery fails or times out.")
@click.option(
    "--wait-for",
    type=click.Choice(get_args(protocol.Receipt)),
    help="Wait (implies --wait) until the message is delivered, read (inbox) or acked (ack)  [default: delivered]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="How long --wait waits  [default: the daemon's wait_timeout_s]",
)
@pass_state
def send(
    state: State,
    agent: str,
    message: str,
    priority: str,
    sender: str | None,
    kind: str | None,
    tags: tuple[str, ...],
    key: str | None,
    subject: str | None,
    reply_to: int | None,
    wait: bool,
    wait_for: protocol.Receipt | None,
    timeout: float | None,
) -> None:
    """Queue MESSAGE (- reads stdin) for AGENT, or for one member of a group with @GROUP; prints its id."""
    wait = wait or wait_for is not None
    if timeout is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait")
    req = protocol.Send(
        to=agent,
        body=read_body(message),
        priority=priority,  # type: ignore[arg-type]
        sender=sender,
        kind=kind,
        tags=list(tags),
        key=key,
        wait=wait,
        timeout=timeout,
        wait_for=wait_for or "delivered",
        reply_to=reply_to,
        subject=subject,
    )
    # With --wait the daemon bounds the wait (timeout or its default), so do not cut it short.
    reply = expect(state.client(timeout=None if wait else IO_TIMEOUT).call(req), protocol.Sent)
    if state.json:
        emit_json(reply)
    elif wait:
        human.echo(f"{reply.id} {wait_for if wait_for in ('read', 'acked') else reply.status}")
    else:
        human.echo(str(reply.id))
    if reply.duplicate and not state.json:
        human.echo(f"note: key {key!r} was used before; {reply.id} is the original message", err=True)
    if not reply.healthy and not state.json:  # queued behind an agent that cannot take it now
        why = reply.reason or "unknown"  # "paused until ..." (coordctl pause), else why its transport is down
        human.echo(f"queued: {agent} is {why if why.startswith('paused') else 'down: ' + why}", err=True)
    if wait and reply.status != "delivered":  # the daemon says so with an error; this is belt and braces
        human.echo(f"error [not_delivered]: message {reply.id} is {reply.status}", err=True)
        click.get_current_context().exit(EXIT_REFUSED)


def json_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """A subcommand's --json: the same as the one before it."""
    state = ctx.find_object(State)
    if value and state is not None:  # (None while a shell completes a word: no command runs then)
        state.json = True


def add_json_option(group: click.Group) -> None:
    """--json after the subcommand too (`coordctl status --json`), on every one of them that lacks it."""
    for command in group.commands.values():
        if not any(p.name == "json" for p in command.params):
            command.params.append(
                click.Option(["--json"], is_flag=True, expose_value=False, callback=json_flag, help="Print JSON.")
            )
        if isinstance(command, click.Group):
            add_json_option(command)


add_json_option(cli)


def main(args: Sequence[str] | None = None) -> NoReturn:
    """coordctl: client errors become an exit code and one line on stderr, ``error [code]: message``, or
    with --json (before or after the subcommand) the JSON object ``{"code": ..., "message": ...}``. A usage
    error's code is ``usage``, an aborted prompt's ``aborted``."""
    args = sys.argv[1:] if args is None else list(args)
    as_json = "--json" in (args[: args.index("--")] if "--" in args else args)
    try:
        code = cli.main(args, "coordctl", standalone_mode=False)
    except DaemonUnavailable as e:
        code = report(as_json, "unavailable", e.message, EXIT_UNREACHABLE)
    except CoordError as e:
        code = report(as_json, e.code, e.describe(), EXIT_REFUSED)
    except click.ClickException as e:
        if not as_json:
            e.show()
            sys.exit(e.exit_code)
        usage = isinstance(e, click.UsageError) or e.exit_code == EXIT_USAGE
        code = report(as_json, "usage" if usage else "error", e.format_message(), e.exit_code)
    except click.Abort:
        if not as_json:
            click.echo("Aborted!", err=True)
            sys.exit(EXIT_REFUSED)
        code = report(as_json, "aborted", "aborted", EXIT_REFUSED)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
