"""The ``coordctl`` subcommands other than ``send``: one per protocol request.

coordctl/cli_base.py has the root group, the exit codes and ``send``; the root group imports this
module the first time it is asked for any other subcommand, and each command here adds itself to it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, NamedTuple, get_args

import click
import msgspec

from coordctl import human, protocol
from coordctl.cli_base import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    BadInput,
    State,
    add_json_option,
    cli,
    complete_agent,
    emit_json,
    kind_option,
    main,
    pass_state,
    priority_option,
    read_body,
    sender_option,
    subject_option,
    tag_option,
)
from coordctl.events import latency
from coordctl.operations import expect

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import BinaryIO

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_UNHEALTHY", "EXIT_UNREACHABLE", "EXIT_USAGE", "cli", "main"]

BODY_WIDTH = 60  # characters of a message's first line shown in tables
STATUSES = get_args(protocol.Status)

if TYPE_CHECKING:
    FloatParamType = click.ParamType[float]
else:  # generic only from click 8.4, and we run on 8.1
    FloatParamType = click.ParamType


class ParsedSpec(FloatParamType):
    """A float parsed from what people write: TIME (human.parse_time) or DURATION (human.parse_duration)."""

    def __init__(self, name: str, parse: Callable[[str], float]) -> None:
        self.name = name
        self.parse = parse

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return self.parse(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


TIME = ParsedSpec("TIME", human.parse_time)
DURATION = ParsedSpec("DURATION", human.parse_duration)


def health(healthy: bool, reason: str | None) -> str:
    return "ok" if healthy else f"down: {reason or 'unknown'}"


def health_or_paused(a: protocol.AgentStatus | protocol.AgentInfo) -> str:
    """The HEALTH column: a paused agent says so first (and whether it is down too)."""
    if not a.paused:
        return health(a.healthy, a.reason)
    until = f"until {human.timestamp(a.paused_until)}" if a.paused_until is not None else "until resumed"
    return f"paused {until}" + ("" if a.healthy else f"; down: {a.reason or 'unknown'}")


def opt(value: str | None) -> str:
    return "-" if value is None else value


@cli.command()
@click.argument("file", type=click.File("rb"))
@pass_state
def batch(state: State, file: BinaryIO) -> None:
    """Queue the messages in FILE (- reads stdin) in one commit; prints their ids.

    FILE is JSON Lines, one message per line:
    {"to": ..., "body": ..., "priority"?, "sender"?, "kind"?, "tags"?, "key"?, "subject"?, "reply_to"?}
    """
    messages = []
    for lineno, line in enumerate(file, 1):
        if not line.strip():
            continue
        try:
            messages.append(msgspec.json.decode(line, type=protocol.NewMessage))
        except msgspec.DecodeError as e:
            raise BadInput(f"{file.name}, line {lineno}: {e}") from None
    ids = state.client().batch(messages) if messages else []
    print_ids(state, ids)


@cli.command()
@click.argument("message")
@click.option("--group", metavar="G", help="Only the agents in group G  [default: every agent]")
@priority_option
@sender_option
@kind_option
@tag_option
@click.option("--key", help="Idempotency key: broadcasting again with the same key stores nothing new.")
@subject_option
@click.option("--include-sender", is_flag=True, help="Queue a copy for the sender too, when it is one of the agents.")
@pass_state
def broadcast(
    state: State,
    message: str,
    group: str | None,
    priority: str,
    sender: str | None,
    kind: str | None,
    tags: tuple[str, ...],
    key: str | None,
    subject: str | None,
    include_sender: bool,
) -> None:
    """Queue MESSAGE (- reads stdin) for every agent (or every one in --group) but its --sender; prints the ids."""
    ids = state.client().broadcast(
        read_body(message),
        group=group,
        priority=priority,  # type: ignore[arg-type]
        sender=sender,
        kind=kind,
        tags=tags,
        key=key,
        subject=subject,
        include_sender=include_sender,
    )
    print_ids(state, ids)


def print_ids(state: State, ids: list[int]) -> None:
    if state.json:
        emit_json({"ids": ids})
    else:
        for i in ids:
            human.echo(str(i))


@cli.command()
@pass_state
def status(state: State) -> None:
    """Show the daemon and every agent's queue; exit 4 if an agent is down or has failed messages.

    The table fits the terminal (or $COLUMNS): first LAST ERROR, then HEALTH are cut short, then
    columns are left out, the least useful first: FILES, P50, P99, TRANSPORT, DELIVERED, IN FLIGHT, OLDEST,
    UNACKED, LAST ERROR. AGENT, HEALTH, QUEUED and FAILED always stay. Into a pipe, without $COLUMNS,
    nothing is cut. Colour on a terminal only, and not with $NO_COLOR set."""
    info = state.client().status()
    if state.json:
        emit_json(info)
    else:
        click.echo(format_status(info, terminal_width(), use_colour()))  # its parts are `visible` already
    click.get_current_context().exit(status_exit_code(info))


def status_exit_code(info: protocol.StatusInfo) -> int:
    """The exit code of `status`: 4 when any agent is unhealthy or has failed messages, for scripts and timers."""
    return EXIT_UNHEALTHY if any(not a.healthy or a.failed for a in info.agents) else EXIT_OK


def terminal_width() -> int | None:
    """$COLUMNS, else the terminal's width; None (no limit) when stdout is not a terminal. (Not
    shutil.get_terminal_size: importing shutil costs more start-up than this.)"""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else None
    except (OSError, ValueError):
        return None


def use_colour() -> bool:
    """Colour only on a terminal that has it, and never with $NO_COLOR set (https://no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def always(info: protocol.StatusInfo) -> bool:
    return True


def inbox_files(a: protocol.AgentStatus) -> str:
    return "-" if a.inbox_files is None else str(a.inbox_files)


def counting_files(info: protocol.StatusInfo) -> bool:
    """Only then the FILES column: an inbox agent's message files on disk."""
    return any(a.inbox_files is not None for a in info.agents)


def pulling(info: protocol.StatusInfo) -> bool:
    """Only then the UNACKED column: the table stays as narrow as it was without pull agents."""
    return any(a.transport == "pull" or a.leased for a in info.agents)


def red_unless_zero(cell: str) -> str | None:
    return None if cell == "0" else "red"


def health_colour(cell: str) -> str | None:
    return "green" if cell == "ok" else "yellow" if cell.startswith("paused") and "down" not in cell else "red"


class Column(NamedTuple):
    """A column of the status table: one line of STATUS_COLUMNS adds one."""

    header: str
    cell: Callable[[protocol.AgentStatus], str]
    drop: int = 0  # too wide for the terminal: columns are left out lowest `drop` first; 0: never
    squeeze: int = 0  # too wide: before any is left out, cut (rightmost first) down to this many characters
    shown: Callable[[protocol.StatusInfo], bool] = always  # whether this status has the column at all
    paint: Callable[[str], str | None] | None = None  # a cell's colour on a terminal


STATUS_COLUMNS = (
    Column("AGENT", lambda a: a.id),
    Column("TRANSPORT", lambda a: a.transport, drop=4),
    Column("HEALTH", lambda a: human.first_line(health_or_paused(a), 40), squeeze=12, paint=health_colour),
    Column("QUEUED", lambda a: str(a.queued)),
    Column("IN FLIGHT", lambda a: str(a.in_flight), drop=6),
    Column("UNACKED", lambda a: unacked(a), drop=8, shown=pulling),
    Column("DELIVERED", lambda a: str(a.delivered), drop=5),
    Column("FAILED", lambda a: str(a.failed), paint=red_unless_zero),
    Column("P50", lambda a: latency(a.latency_p50), drop=2),
    Column("P99", lambda a: latency(a.latency_p99), drop=3),
    Column("OLDEST", lambda a: oldest(a), drop=7),
    Column("FILES", inbox_files, drop=1, shown=counting_files),
    # The last column: room for why. Its cell is cut to one line of 300 characters even without a terminal.
    Column("LAST ERROR", lambda a: opt(a.last_error and human.first_line(a.last_error, 300)), drop=9, squeeze=20),
)
SEP = 2  # spaces between columns (human.table)


def fit_columns(
    columns: Sequence[Column], rows: list[list[str]], width: int | None
) -> tuple[list[Column], list[list[str]]]:
    """The columns (and their cells) of a table that fits in `width` characters: squeezed, then dropped,
    as each Column says. AGENT and the columns never dropped may still overflow a very narrow terminal."""
    columns = list(columns)
    widths = [max(len(c.header), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]

    def excess() -> int:
        return sum(widths) + SEP * (len(widths) - 1) - width if width is not None else 0

    for i in reversed(range(len(columns))):
        over, room = excess(), widths[i] - max(columns[i].squeeze, len(columns[i].header))
        if over <= 0:
            break
        if columns[i].squeeze and room > 0:
            widths[i] -= min(over, room)
            for row in rows:
                row[i] = human.first_line(row[i], widths[i])
    for rank in sorted(c.drop for c in columns if c.drop):
        if excess() <= 0:
            break
        i = next(j for j, c in enumerate(columns) if c.drop == rank)
        del columns[i], widths[i]
        for row in rows:
            del row[i]
    return columns, rows


def cluster_parts(cl: protocol.ClusterStatus) -> list[str]:
    """`status`'s cluster line: this node, its link to NATS, its backlog, the other nodes."""
    since = f" since {human.timestamp(cl.since)}" if cl.since is not None else ""
    link = f"connected to {cl.server or 'NATS'}{since}" if cl.connected else f"NATS unreachable{since}"
    if not cl.connected and cl.error:
        link += f" ({cl.error})"
    others = ", ".join(f"{n.node} ({n.agents}{'' if n.live else ', down'})" for n in cl.nodes) or "none seen"
    return [f"node {cl.node}", link, f"forward backlog {cl.backlog}", f"nodes {others}"]


def format_status(info: protocol.StatusInfo, width: int | None = None, colour: bool = False) -> str:
    """`status` for people, fit to `width` characters (None: no limit); every part `visible`, and
    coloured (escape codes) only with `colour`."""
    lines = flow(
        [f"coordd {info.version}", f"pid {info.pid}", f"up {human.duration(info.uptime)}", f"socket {info.socket}"],
        width,
    )
    lines += flow(
        [
            f"store {info.db_path}",
            f"{human.size(info.db_bytes)}, {human.plural(info.rows, 'row')}",
            f"retention {human.plural(info.max_messages, 'message')} / {human.plural_g(info.max_age_days, 'day')}",
            f"queued {info.queued} ({human.size(info.queued_bytes)} of {human.size(info.max_queued_bytes)})",
        ],
        width,
    )
    if info.metrics_url or info.metrics_error or info.watchers:
        served = info.metrics_url or (f"not served: {info.metrics_error}" if info.metrics_error else "socket only")
        lines += flow([f"metrics {served}", f"watchers {info.watchers}"], width)
    if info.http_url or info.http_error:
        lines += flow([f"dashboard {info.http_url or f'not served: {info.http_error}'} (coordctl dashboard)"], width)
    if info.cluster is not None:
        lines += flow(cluster_parts(info.cluster), width)
        if info.cluster.refused:
            lines.append(f"refused (served by another node): {', '.join(info.cluster.refused)}")
    if info.config_error:
        lines.append(f"config: the last reload failed, the previous config still serves: {info.config_error}")
    if info.orphaned:
        names = ", ".join(info.orphaned_agents)
        lines.append(
            f"orphaned: {human.plural(info.orphaned, 'message')} queued for agents no longer configured ({names})"
        )
    lines.append("")
    if not info.agents:
        lines.append("no agents configured")
        return human.visible("\n".join(lines))
    columns = [c for c in STATUS_COLUMNS if c.shown(info)]
    rows = [[human.visible(c.cell(a)) for c in columns] for a in info.agents]
    columns, rows = fit_columns(columns, rows, width)
    paints = [c.paint for c in columns]
    shown = {c.header for c in columns}
    notes = []
    if shown & {"P50", "P99"}:
        latencies = ", ".join(h for h in ("P50", "P99") if h in shown)
        notes.append(f"({latencies}: time from accepted to delivered over the last 5 minutes)")
    if "UNACKED" in shown:
        notes.append("(UNACKED: a pull agent's fetched messages not acknowledged yet; QUEUED + UNACKED is its backlog,")
        notes.append(" OLDEST the age of the oldest message in it)")
    table = human.table(
        [c.header for c in columns],
        rows,
        (lambda i, cell: paints[i](cell) if paints[i] else None) if colour else None,  # type: ignore[misc]
    )
    return "\n".join([human.visible("\n".join(lines)), table, *notes, *map(human.visible, attention(info, width))])


def flow(parts: list[str], width: int | None) -> list[str]:
    """Parts two spaces apart, on as few lines as `width` allows (None: one line)."""
    lines = [parts[0]]
    for part in parts[1:]:
        if width is not None and len(lines[-1]) + SEP + len(part) > width:
            lines.append(part)
        else:
            lines[-1] += " " * SEP + part
    return lines


def oldest(a: protocol.AgentStatus) -> str:
    """The OLDEST column: the oldest queued message's age; a pull agent's: the oldest unacknowledged one's."""
    age = a.oldest_unacked_age if a.transport == "pull" or a.leased else a.oldest_queued_age
    return "-" if age is None else human.duration(age)


def unacked(a: protocol.AgentStatus) -> str:
    return str(a.leased) if a.transport == "pull" or a.leased else "-"


def attention(info: protocol.StatusInfo, width: int | None = None) -> list[str]:
    """What makes `status` exit 4, each with what to do about it, wrapped to `width`."""
    out = []
    for a in info.agents:
        if not a.healthy:
            since = "" if a.down_since is None else f" since {time.strftime('%H:%M:%S', time.localtime(a.down_since))}"
            out.append(
                f"{a.id} is down{since} ({a.reason or 'no reason given'}): "
                f"its {human.plural(a.queued, 'queued message')} {'waits' if a.queued == 1 else 'wait'}; "
                "coordd retries by itself once the transport works again"
            )
        if a.failed:
            out.append(
                f"{a.id} has {human.plural(a.failed, 'failed message')}: "
                f"`coordctl history --agent {a.id} --status failed`, then `coordctl retry --agent {a.id}` "
                "(or `retry ID`) once the cause is fixed"
            )
    if not out:
        return []
    if width is None:
        return ["", "attention:", *(f"  {line}" for line in out)]
    import textwrap  # only for a terminal

    wrap = textwrap.TextWrapper(width, "  ", "    ", break_long_words=False, break_on_hyphens=False)
    return ["", "attention:", *(part for line in out for part in wrap.wrap(line))]


@cli.command()
@click.option("--agent", help="Only messages to this agent.", shell_complete=complete_agent)
@click.option("--sender", help="Only messages from this sender.")
@click.option("--status", type=click.Choice(STATUSES), help="Only messages in this state.")
@click.option("--since", type=TIME, help="Not older than TIME: unix seconds, 2026-11-23T10:00, or 10m/2h/1d ago.")
@click.option("--until", type=TIME, help="Older than TIME (same forms as --since).")
@click.option("--grep", metavar="TEXT", help="Only messages whose body contains TEXT.")
@click.option(
    "--search",
    metavar="TEXT",
    help='Full-text search of subject and body: every word must match (in any order); "a phrase" in quotes, '
    "prefix* for words starting so. Best match first, among the newest 1,000 matches.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, metavar="N", help="Messages per page."
)
@click.option("--cursor", type=int, metavar="C", help="Continue from where a previous page stopped.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Show the page oldest first, then what happens from now on, as `watch` does, until ^C.",
)
@pass_state
def history(
    state: State,
    agent: str | None,
    sender: str | None,
    status: str | None,
    since: float | None,
    until: float | None,
    grep: str | None,
    search: str | None,
    limit: int,
    cursor: int | None,
    follow: bool,
) -> None:
    """List messages, newest first (with --search: best match first; with --follow: oldest first, then live)."""
    stream = None
    if follow:
        if until is not None or cursor is not None or grep is not None or search is not None:
            raise click.UsageError(
                "--follow goes on from now: it does not combine with --until, --cursor, --grep or --search"
            )
        # Subscribe before the page is read, so that nothing happens unseen in between.
        stream = state.client().watch(
            agents=[agent] if agent else [], events=FOLLOW_EVENTS.get(status, []), idle=sys.stdout.flush
        )
    page = state.client().history(
        agent=agent,
        sender=sender,
        status=status,  # type: ignore[arg-type]
        since=since,
        until=until,
        contains=grep,
        limit=limit,
        cursor=cursor,
        search=search,
    )
    if stream is not None:
        from coordctl import events

        page.messages.reverse()
        print_page(state, page)
        events.print_stream(stream, state.json, events.follow_filter(page, sender))
    elif state.json:
        emit_json(page)
    else:
        print_page(state, page)


# `history --status S --follow`: the events that put a message in status S.
FOLLOW_EVENTS: dict[str | None, list[protocol.EventType]] = {
    "queued": ["accepted", "retried"],
    "delivering": ["delivering"],
    "delivered": ["delivered"],
    "failed": ["failed"],
    "cancelled": ["cancelled"],
}


def print_page(state: State, page: protocol.Page) -> None:
    """A page as a table; with --json (only `history --follow` comes here so) one message per line, JSON Lines."""
    if state.json:
        for m in page.messages:
            emit_json(m)
        return
    if page.messages:
        headers = ("ID", "TIME", "FROM", "TO", "PRIORITY", "STATUS", "BODY")
        rows = [
            (
                str(m.id),
                human.timestamp(m.created),
                opt(m.sender),
                f"{m.group} -> {m.to}" if m.group is not None else m.to,
                m.priority,
                m.status,
                human.first_line(m.body, BODY_WIDTH),
            )
            for m in page.messages
        ]
        human.echo(human.table(headers, rows))
    else:
        human.echo("no messages", err=True)
    if page.cursor is not None:
        human.echo(f"next page: --cursor {page.cursor}", err=True)


@cli.command()
@click.argument("message_id", metavar="ID", type=int)
@pass_state
def show(state: State, message_id: int) -> None:
    """Show message ID: every field, the whole body, and its delivery attempts."""
    reply = state.client().get(message_id)
    if state.json:
        emit_json(reply)
    else:
        human.echo(format_message(reply))


def format_message(reply: protocol.Message) -> str:
    m = reply.message
    fields: Sequence[tuple[str, str]] = [
        ("id", str(m.id)),
        ("to", m.to),
        *((("group", f"{m.group}  (its pick chose {m.to})"),) if m.group is not None else ()),
        ("from", opt(m.sender)),
        ("status", m.status),
        ("priority", m.priority),
        ("kind", opt(m.kind)),
        ("tags", ", ".join(m.tags) or "-"),
        ("key", key_text(m.key)),
        *((("subject", m.subject),) if m.subject is not None else ()),
        *((("re", f"#{m.reply_to}  (thread #{m.thread})"),) if m.reply_to is not None else ()),
        *((("resent from", f"#{m.resent_from}"),) if m.resent_from is not None else ()),
        ("created", human.timestamp(m.created)),
        ("delivered", human.timestamp(m.delivered)),
        ("read", human.timestamp(m.read_at)),
        ("acked", human.timestamp(m.acked_at)),
        ("attempts", str(m.attempts)),
        ("error", opt(m.error)),
    ]
    width = max(len(name) for name, _ in fields) + 2
    lines = [f"{name + ':':<{width}}{value}" for name, value in fields]
    lines += ["", m.body.rstrip("\n"), ""]
    if reply.attempts:
        rows = [
            (
                str(a.number),
                human.timestamp(a.started),
                f"{(a.finished - a.started) * 1000:.1f} ms",
                "ok" if a.ok else f"failed: {opt(a.error)}",
            )
            for a in reply.attempts
        ]
        lines.append(human.table(("ATTEMPT", "STARTED", "TOOK", "RESULT"), rows))
    else:
        lines.append("no delivery attempts yet")
    return "\n".join(lines)


def key_text(key: str | None) -> str:
    """A key as typed: a broadcast's copy's key (``KEY`` U+001F ``AGENT``) as the broadcast's key and its agent."""
    if key is None:
        return "-"
    broadcast, sep, agent = key.partition(protocol.BROADCAST_KEY_SEP)
    return f"{broadcast}  (broadcast, the copy for {agent})" if sep else key


@cli.command()
@click.argument("agent", shell_complete=complete_agent)
@click.option("--all", "every", is_flag=True, help="Read messages too, not only unread ones.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, metavar="N", help="Messages at most."
)
@click.option(
    "--wait",
    type=click.FloatRange(0, 3600),
    default=0.0,
    metavar="SECONDS",
    help="If there is none, wait up to SECONDS for one to arrive.",
)
@click.option("--ack", is_flag=True, help="Acknowledge the messages shown, too.")
@pass_state
def inbox(state: State, agent: str, every: bool, limit: int, wait: float, ack: bool) -> None:
    """AGENT's delivered messages, oldest first (unread ones unless --all); marks them read.

    A pull agent's inbox delivers its queued messages (urgent first), each leased for [pull] lease_s: one
    not acknowledged (`coordctl ack`) by then is returned again."""
    messages = state.client().inbox(agent, unread=not every, limit=limit, wait=wait, ack=ack)
    if state.json:
        emit_json(messages)
        return
    print_messages(messages)


def print_messages(messages: list[protocol.MessageInfo]) -> None:
    """Each message as a `--- #ID  TIME  from ...` line, then its body."""
    if not messages:
        human.echo("no messages", err=True)
    for m in messages:
        meta = [
            f"from {m.sender}" if m.sender else "",
            m.kind or "",
            m.priority if m.priority != "regular" else "",
            f"re: #{m.reply_to}" if m.reply_to is not None else "",
            m.subject or "",
        ]
        about = "  ".join(x for x in meta if x)
        human.echo(f"--- #{m.id}  {human.timestamp(m.created)}  {about}".rstrip())
        human.echo(m.body.rstrip("\n"))


@cli.command()
@click.argument("agent", shell_complete=complete_agent)
@click.argument("message_ids", metavar="ID...", type=int, nargs=-1, required=True)
@pass_state
def ack(state: State, agent: str, message_ids: tuple[int, ...]) -> None:
    """AGENT acknowledges its messages ID...; prints how many were not acknowledged before."""
    changed = state.client().ack(agent, message_ids)
    if state.json:
        emit_json({"changed": changed})
    else:
        human.echo(f"{changed} acknowledged")


@cli.command()
@click.argument("message_id", metavar="ID", type=int)
@click.argument("message")
@sender_option
@pass_state
def reply(state: State, message_id: int, message: str, sender: str | None) -> None:
    """Answer message ID with MESSAGE (- reads stdin): sent to its sender, in its thread; prints the new id."""
    new_id = state.client().reply(message_id, read_body(message), sender=sender)
    if state.json:
        emit_json({"id": new_id})
    else:
        human.echo(str(new_id))


@cli.command()
@click.argument("message_id", metavar="ID", type=int)
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=1000, show_default=True, metavar="N", help="Messages at most."
)
@pass_state
def thread(state: State, message_id: int, limit: int) -> None:
    """Every message of message ID's thread, oldest first."""
    messages = state.client().thread(message_id, limit=limit)
    if state.json:
        emit_json(messages)
    else:
        print_messages(messages)


# Bulk retry and cancel: above this many messages, ask first (on a terminal) or require --yes.
CONFIRM_ABOVE = 100


def bulk_options(status: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def add(f: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(
            (
                click.argument("message_id", metavar="[ID]", type=int, required=False),
                click.option("--agent", metavar="AGENT", help="Every message of AGENT that matches (instead of ID)."),
                click.option(
                    "--status",
                    type=click.Choice([status]),
                    default=status,
                    show_default=True,
                    help=f"Only {status} messages (the only ones this applies to).",
                ),
                click.option("--since", type=TIME, help="Only messages sent since TIME (10m, 2h, ISO-8601, ...)."),
                click.option(
                    "--yes", "-y", is_flag=True, help=f"Do it without asking, even for more than {CONFIRM_ABOVE}."
                ),
            )
        ):
            f = option(f)
        return f

    return add


@cli.command()
@bulk_options("failed")
@pass_state
def retry(state: State, message_id: int | None, agent: str | None, status: str, since: float | None, yes: bool) -> None:
    """Queue failed message ID again, or with --agent every failed message of AGENT (--since: only the recent
    ones); prints how many. More than 100 ask first on a terminal, and need --yes otherwise."""
    one_or_all(state, message_id, agent, since, yes, protocol.Retry, "retry", "failed", "queued again")


@cli.command()
@bulk_options("queued")
@pass_state
def cancel(
    state: State, message_id: int | None, agent: str | None, status: str, since: float | None, yes: bool
) -> None:
    """Cancel message ID, which must still be queued, or with --agent every message still queued for AGENT
    (--since: only the recent ones); prints how many. Messages being delivered are left alone. More than 100
    ask first on a terminal, and need --yes otherwise."""
    one_or_all(state, message_id, agent, since, yes, protocol.Cancel, "cancel", "queued", "cancelled")


def one_or_all(
    state: State,
    message_id: int | None,
    agent: str | None,
    since: float | None,
    yes: bool,
    one: type[protocol.Retry] | type[protocol.Cancel],
    verb: str,
    status: str,
    done: str,
) -> None:
    """retry and cancel: message ID, or with --agent each of AGENT's messages in `status` (counted first, then
    confirmed when many); prints the message's new state, or how many were `done`."""
    if message_id is not None:
        no_filters(agent, since)
        print_sent(state, state.client().call(one(message_id=message_id)))
        return
    client = state.client()
    agent = need_agent(agent)
    many = client.retry_many if one is protocol.Retry else client.cancel_many
    n = many(agent, since=since, dry_run=True)
    confirm_bulk(n, f"{verb} {n} {status} messages of {agent}", yes)
    print_count(state, many(agent, since=since) if n else 0, done)


def no_filters(agent: str | None, since: float | None) -> None:
    if agent is not None or since is not None:
        raise click.UsageError("give either a message ID or --agent (with --since), not both")


def need_agent(agent: str | None) -> str:
    if agent is None:
        raise click.UsageError("give a message ID, or --agent AGENT for all of its messages")
    return agent


def confirm_bulk(n: int, what: str, yes: bool) -> None:
    """More than CONFIRM_ABOVE: ask on a terminal; without one, only --yes goes ahead (nothing is guessed)."""
    if n <= CONFIRM_ABOVE or yes:
        return
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise click.UsageError(f"this would {what}: more than {CONFIRM_ABOVE}, so pass --yes to go ahead")
    if not click.confirm(f"{what}?", err=True):
        raise click.Abort()


def print_count(state: State, n: int, done: str) -> None:
    if state.json:
        emit_json({"count": n})
    else:
        human.echo(f"{n} {'message' if n == 1 else 'messages'} {done}")


@cli.command()
@click.argument("message_id", metavar="ID", type=int)
@pass_state
def resend(state: State, message_id: int) -> None:
    """Queue a new copy of message ID (whatever its status) to its recipient; prints the new id."""
    new_id = state.client().resend(message_id)
    if state.json:
        emit_json({"id": new_id})
    else:
        human.echo(str(new_id))


@cli.command()
@click.argument("agent")
@click.option("--for", "duration", type=DURATION, help="End the pause by itself after DURATION (10m, 2h).")
@pass_state
def pause(state: State, agent: str, duration: float | None) -> None:
    """Hold AGENT's deliveries: messages to it queue but are not delivered until `resume` (or --for ends it).
    A pull agent's inbox returns nothing new meanwhile. The pause survives a restart."""
    print_pause(state, state.client().pause(agent, duration=duration))


@cli.command()
@click.argument("agent")
@pass_state
def resume(state: State, agent: str) -> None:
    """Deliver AGENT's held messages again, in order."""
    print_pause(state, state.client().resume(agent))


def print_pause(state: State, reply: protocol.PauseState) -> None:
    if state.json:
        emit_json(reply)
        return
    queued = f"{reply.queued} {'message' if reply.queued == 1 else 'messages'} queued"
    if not reply.paused:
        human.echo(f"{reply.agent} is not paused ({queued})")
    elif reply.until is None:
        human.echo(f"{reply.agent} paused until resumed ({queued})")
    else:
        human.echo(f"{reply.agent} paused until {human.timestamp(reply.until)} ({queued})")


def print_sent(state: State, reply: protocol.Reply) -> None:
    sent = expect(reply, protocol.Sent)
    if state.json:
        emit_json(sent)
    else:
        human.echo(f"{sent.id} {sent.status}")


@cli.group(invoke_without_command=True)
@click.pass_context
def agents(ctx: click.Context) -> None:
    """List the configured agents (or: agents import-coords FILE)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_agents)


@agents.command("list")
@pass_state
def list_agents(state: State) -> None:
    """List the configured agents (the default)."""
    found = state.client().agents()
    if state.json:
        emit_json({"agents": found})
        return
    if any(a.node is not None for a in found):  # a cluster's node: every node's agents, each with its node
        by_node = [(a.id, opt(a.node), a.transport, ",".join(a.groups) or "-", agent_health(a)) for a in found]
        human.echo(human.table(("AGENT", "NODE", "TRANSPORT", "GROUPS", "HEALTH"), by_node))
        return
    rows = [(a.id, a.transport, ",".join(a.groups) or "-", health_or_paused(a)) for a in found]
    human.echo(human.table(("AGENT", "TRANSPORT", "GROUPS", "HEALTH"), rows) if rows else "no agents configured")


def agent_health(a: protocol.AgentInfo) -> str:
    return f"refused: {a.refused}" if a.refused else health_or_paused(a)


@cli.command()
@pass_state
def ping(state: State) -> None:
    """Check that the daemon answers; prints its version and the round-trip time."""
    client = state.client()
    client.connect()  # time the round trip, not the connect
    start = time.perf_counter()
    pong = client.ping()
    rtt_ms = (time.perf_counter() - start) * 1000
    if state.json:
        emit_json({"version": pong.version, "protocol": pong.protocol, "rtt_ms": round(rtt_ms, 3)})
    else:
        human.echo(f"coordd {pong.version}  protocol {pong.protocol}  round trip {rtt_ms:.3f} ms")
    if pong.protocol != protocol.PROTOCOL_VERSION:
        human.echo(f"warning: coordctl speaks protocol {protocol.PROTOCOL_VERSION}", err=True)


@cli.command()
@pass_state
def reload(state: State) -> None:
    """Make the daemon re-read its config file, as SIGHUP does; prints what changed."""
    done = state.client().reload()
    if state.json:
        emit_json(done)
        return
    human.echo(f"reloaded {done.config}")
    for label, names in (
        ("added", done.added),
        ("removed", done.removed),
        ("changed", done.changed),
        ("needs a restart", done.restart_needed),
    ):
        if names:
            human.echo(f"{label}: {', '.join(names)}")
    if done.orphaned:
        human.echo(f"orphaned: {done.orphaned} queued messages wait for agents no longer configured")


# --- observability ---------------------------------------------------------------


@cli.command()
@click.option(
    "--agent",
    "agents",
    multiple=True,
    metavar="A",
    help="Only events of agent A; repeat for more.",
    shell_complete=complete_agent,
)
@click.option(
    "--event",
    "kinds",
    multiple=True,
    type=click.Choice(get_args(protocol.EventType)),
    help="Only events of this type; repeat for more.",
)
@pass_state
def watch(state: State, agents: tuple[str, ...], kinds: tuple[str, ...]) -> None:
    """Print what happens to messages as it happens, until ^C.

    Events: accepted, delivering (once per attempt), delivered, retried (an attempt
    failed, or `retry`), failed (for good), cancelled, read (its recipient fetched
    it: `inbox`), acked, held (it waits: its agent is down, with the reason).
    A watcher that reads too slowly is told how many events it missed; delivery
    never waits for it.
    """
    from coordctl import events

    stream = state.client().watch(agents=agents, events=kinds, idle=sys.stdout.flush)  # type: ignore[arg-type]
    events.print_stream(stream, state.json)  # --json: one JSON object per line


@cli.command()
@pass_state
def metrics(state: State) -> None:
    """Print every metric in the Prometheus text format (what `[metrics] listen` serves over HTTP)."""
    text = state.client().metrics()
    if state.json:
        emit_json({"text": text})
    else:
        human.echo(text, nl=False)


TOKEN_SUFFIX = ".http-token"  # the dashboard's token file: the daemon's socket path plus this (docs/dashboard.md)


@cli.command()
@click.option("--open", "open_browser", is_flag=True, help="Open it in the web browser too.")
@pass_state
def dashboard(state: State, open_browser: bool) -> None:
    """Print the dashboard's URL with the daemon's token; --open opens it in the web browser.

    The daemon serves the dashboard when its config sets `[http] listen`. The token is new at each start,
    in a file beside the socket that only the daemon's user can read; the page keeps it in a cookie."""
    info = state.client().status()
    if info.http_url is None:
        raise click.ClickException(
            f"the daemon's dashboard is not served: {info.http_error}"
            if info.http_error
            else 'the daemon serves no dashboard: set `listen = "127.0.0.1:8765"` under `[http]` in its config '
            "and restart it (docs/dashboard.md)"
        )
    path = info.socket + TOKEN_SUFFIX
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            token = f.read(1024).decode("ascii", "replace").strip()
    except OSError as e:
        raise click.ClickException(
            f"cannot read the dashboard's token from {path}: {e.strerror or e} (only the daemon's user can)"
        ) from None
    url = f"{info.http_url}?token={token}"
    if state.json:
        emit_json({"url": url})
    else:
        human.echo(url)
    if open_browser:
        import webbrowser  # for --open only

        if not webbrowser.open(url):
            human.echo("no web browser found: open the URL above in one", err=True)


# --- gui agents --------------------------------------------------------------------


@agents.command("import-coords")
@click.argument("file", type=click.Path(dir_okay=False))
def import_coords(file: str) -> None:
    """Print [[agents]] tables for the active agents of the old tool's coordinates FILE."""
    from coordctl import coords  # its json import is for this command only

    try:
        human.echo(coords.to_toml(coords.load(file)), nl=False)
    except coords.CoordsError as e:
        raise BadInput(str(e)) from None


@cli.command()
@click.argument("agent", shell_complete=complete_agent)
@click.argument("message", required=False)
@pass_state
def onboard(state: State, agent: str, message: str | None) -> None:
    """Run gui AGENT's onboarding sequence now, pasting MESSAGE ("-": stdin; default: gui.onboarding_message)."""
    body = read_body(message) if message is not None else None
    done = state.client().onboard(agent, body)
    if state.json:
        emit_json(done)
    else:
        human.echo(f"onboarded {done.agent}: {done.steps} steps")


@cli.group()
def coords() -> None:
    """Screen coordinates for gui agents."""


@coords.command("capture")
@click.argument("agent", shell_complete=complete_agent)
@click.option("--onboarding", is_flag=True, help="Print onboarding_x/onboarding_y instead of x/y.")
@click.option(
    "--delay",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    metavar="S",
    help="Seconds to move the mouse into place before it is read.",
)
@pass_state
def capture(state: State, agent: str, onboarding: bool, delay: int) -> None:
    """Read the mouse position (on coordd's display) and print it as AGENT's TOML lines."""
    what = "onboarding input" if onboarding else "chat input"
    client = state.client()
    client.ping()  # fail now, not after the countdown, when coordd is not running
    if delay:
        human.echo(f"Point the mouse at {agent}'s {what}:", err=True, nl=False)
        for left in range(delay, 0, -1):
            human.echo(f" {left}", err=True, nl=False)
            time.sleep(1)  # noqa: sleep-ok: a countdown for a person moving the mouse
        human.echo("", err=True)
    at = client.pointer()
    keys = ("onboarding_x", "onboarding_y") if onboarding else ("x", "y")
    if state.json:
        emit_json({"agent": agent, keys[0]: at.x, keys[1]: at.y})
        return
    human.echo(f"# {agent}: {what} ({at.screen_width}x{at.screen_height} screen)")
    human.echo(f"{keys[0]} = {at.x}\n{keys[1]} = {at.y}")


# --- agents: MCP server and hooks ---------------------------------------------------

agent_option = click.option(
    "--agent",
    envvar="COORDD_AGENT",
    metavar="NAME",
    help="The agent to act as  [default: $COORDD_AGENT]",
    shell_complete=complete_agent,
)


@cli.command()
@agent_option
@click.option(
    "--print-config",
    "client",
    type=click.Choice(["claude-code", "codex", "cursor", "gemini"]),
    help="Print the snippet that adds this server to CLIENT's settings, and exit.",
)
@pass_state
def mcp(state: State, agent: str | None, client: str | None) -> None:
    """Serve coordd's tools to a coding agent over MCP (stdio), acting as agent NAME.

    The agent sends as NAME and reads only NAME's messages. Needs the mcp extra:
    pip install 'coordd[mcp]'.
    """
    if agent is None:
        raise click.UsageError("give the agent to act as: --agent NAME (or set $COORDD_AGENT)")
    if client is not None:
        from coordctl import agent_setup

        human.echo(f"# {agent_setup.WHERE[client]}", err=True)
        click.echo(agent_setup.mcp_config(client, agent, state.socket_path, agent_setup.coordctl_path()), nl=False)
        return
    try:
        from coordctl import mcp_server
    except ImportError as e:
        raise click.ClickException(f"coordctl mcp needs the mcp extra: pip install 'coordd[mcp]' ({e})") from None
    mcp_server.serve(agent, state.socket_path)


class NeverBlocks(click.Command):
    """A hook's command: a usage error exits 0 too, since Claude Code takes exit 2 as "block the prompt (or the
    stop)", and a hook must never hold the agent up."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: object
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            human.echo(f"coordctl hook: {e.format_message().rstrip('.')}; nothing added", err=True)
            raise click.exceptions.Exit(EXIT_OK) from None


@cli.group()
def hook() -> None:
    """Hooks that hand an agent its messages between turns."""


@hook.command("claude-code", cls=NeverBlocks)
@agent_option
@click.option("--continue-on-mail", is_flag=True, help="On Stop: keep the agent working while unread messages wait.")
@click.option(
    "--ack",
    is_flag=True,
    help="Acknowledge the messages it hands over (for a pull agent without the MCP tools, whose unacknowledged "
    "messages come back when their lease ends).",
)
@click.option("--print-config", is_flag=True, help="Print the settings.json hooks block, and exit.")
@pass_state
def claude_code_hook(state: State, agent: str | None, continue_on_mail: bool, ack: bool, print_config: bool) -> None:
    """Answer a Claude Code hook event (JSON on stdin) with agent NAME's unread messages.

    SessionStart, UserPromptSubmit: the messages become additional context (and are
    marked read). Stop, with --continue-on-mail: blocks the stop while messages wait.
    Never holds the agent up: if coordd is down, prints one line on stderr and exits 0.
    """
    if print_config:
        from coordctl import agent_setup

        human.echo(f"# {agent_setup.WHERE['hooks']}", err=True)
        click.echo(agent_setup.hooks_config(agent, state.socket_path, agent_setup.coordctl_path()), nl=False)
        return
    if agent is None:
        human.echo("coordctl hook: give the agent: --agent NAME (or set $COORDD_AGENT); nothing added", err=True)
        return
    from coordctl import claude_hook

    try:
        client = state.client(timeout=claude_hook.HOOK_TIMEOUT)
    except click.UsageError as e:
        human.echo(f"coordctl hook: {e.format_message().rstrip('.')}; nothing added", err=True)
        return
    out, note = claude_hook.run(sys.stdin.buffer.read(), agent, continue_on_mail, client, ack)
    if note is not None:
        human.echo(note, err=True)
    sys.stdout.buffer.write(out)


add_json_option(cli)  # on the commands added above (send has it already)
