"""How a message reaches an agent. One Transport instance serves one agent.

A transport's `deliver` gets a non-empty list of messages in delivery order and
delivers them in that order. It returns when all are delivered, or raises:

- DeliveryError(reason, delivered=k): the first k were delivered, message k failed
  (it counts as an attempt and is retried with backoff), the rest were not tried;
- TransportDown(reason, delivered=k): the first k were delivered; the rest were not
  tried, nothing counts as an attempt, and they stay queued until the transport is
  probed again (every delivery.unhealthy_recheck_ms, once `health()` reports it healthy).

`max_batch` bounds how many messages one call gets (work in bounded chunks so a
long queue never starves the event loop). `exclusive` names a resource shared by
all transports of one kind (the GUI: one mouse, one clipboard): deliveries that
name the same resource never run at the same time.

A message is one submit. A terminal program that has not turned on bracketed paste
takes each newline of a paste as Enter, so a message of several lines would arrive
as several inputs (`hi\n/exit`: the second one a command). The tmux and gui agents'
`multiline` says how such a text goes in: "join" (the default) puts it on one line,
each newline shown as LINE_SEPARATOR; "paste" pastes it as it is (right for a
program that takes a bracketed paste, or a GUI input where a pasted newline is
text); "keys" types each line and presses the agent's `newline_key` between them.

Which transport an agent gets: coordd.transports.factory.
"""

from __future__ import annotations

from coordctl.protocol import DEFAULT_KIND
from coordd.model import BOUNCE, DeliveryError, Record, TransportDown

__all__ = [
    "LINE_SEPARATOR",
    "DeliveryError",
    "Record",
    "Transport",
    "TransportDown",
    "header_fields",
    "input_lines",
    "one_line",
    "sender_shown",
]

# What "join" shows in place of each newline: visible, plainly not part of the text, and no key to a terminal.
LINE_SEPARATOR = " \u23ce "  # " ⏎ "


def input_lines(text: str) -> list[str]:
    """The lines of a text as a terminal would end them: at LF, CR (Enter itself) or CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def one_line(text: str) -> str:
    """The text as one input line ("join"): each line end shown as LINE_SEPARATOR."""
    return LINE_SEPARATOR.join(input_lines(text))


def sender_shown(m: Record) -> str:
    """Who a header says a message is from: its sender; "coordd" for a bounce (it has none), else "unknown"."""
    return m.sender or ("coordd" if m.kind == BOUNCE else "unknown")


def header_fields(m: Record) -> dict:
    """The fields a tmux or gui header template may use (coordd.gui.config.HEADER_FIELDS has samples).

    `about` is " | re: #ID" and " | SUBJECT" for what is set, else empty: a template ending in it (the
    default's) reads as before for a message that answers none and has no subject."""
    about = (f" | re: #{m.reply_to}" if m.reply_to is not None else "") + (f" | {m.subject}" if m.subject else "")
    return {
        "sender": sender_shown(m),
        "to": m.agent,
        "kind": m.kind or DEFAULT_KIND,
        "priority": m.priority,
        "PRIORITY": m.priority.upper(),
        "id": m.id,
        "tags": ",".join(m.tags or ()),
        "subject": m.subject or "",
        "reply_to": "" if m.reply_to is None else m.reply_to,
        "about": about,
    }


class Transport:
    name = "?"
    max_batch = 1
    exclusive: str | None = None
    pull = False  # True: nothing is pushed, the agent fetches (coordd.transports.pull); its queue has no worker
    # True: deliver() hands the messages to another node (coordd.cluster.forwarding): they are recorded forwarded,
    # not delivered, and that node's receipts settle them.
    forwards = False

    async def start(self) -> None:
        """Open warm connections; called once before the first delivery."""

    async def close(self) -> None:
        """Release what start() opened."""

    def take_over(self, old: Transport) -> None:
        """This transport replaces old for the same agent (a reload changed its config): keep what old
        knows about messages half-delivered, where it still applies."""

    def health(self) -> str | None:
        """None when healthy, else the reason it is not."""
        return None

    def idle(self, queued: int, unacked: int) -> bool | None:
        """Is the agent free for more work, as far as this transport can tell without any I/O? None: it cannot
        tell (the default). A group whose pick is "idle" prefers a member that answers True. `queued`: its
        messages waiting or in flight; `unacked`: those and the delivered ones it has not acknowledged."""
        return None

    def files(self) -> int | None:
        """How many message files the transport keeps on disk (an inbox's, coordd.inbox_retention bounds
        them); None when it keeps none, or has not counted them yet."""
        return None

    async def deliver(self, messages: list[Record]) -> None:
        raise NotImplementedError
