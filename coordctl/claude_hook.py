"""``coordctl hook claude-code``: hand an agent its coordd messages between Claude Code's turns.

Claude Code runs the hook command with the event as JSON on stdin and reads the answer as JSON on
stdout (its hooks reference documents both):

- ``SessionStart`` and ``UserPromptSubmit``: the agent's unread messages become
  ``{"hookSpecificOutput": {"hookEventName": EVENT, "additionalContext": TEXT}}``, context the model
  reads before the turn; the ``inbox`` request that fetches them marks them read.
- ``Stop`` (only with ``--continue-on-mail``): when unread messages wait, ``{"decision": "block",
  "reason": TEXT}`` keeps the agent working on them. An event with ``stop_hook_active`` true (the agent
  is already continuing because of a Stop hook) is let stop, as the reference asks, so that mail
  arriving without end cannot keep an agent running without end.

Anything else, or no message, prints nothing. The hook must never hold the agent up: when the daemon
is down (or the event is unreadable) it prints one line on stderr and exits 0, and it waits at most
``HOOK_TIMEOUT`` for a wedged daemon. Only what the CLI already imports is used here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from coordctl import human
from coordctl.errors import CoordError

if TYPE_CHECKING:
    from coordctl import protocol
    from coordctl.client import Client

HOOK_TIMEOUT = 2.0  # seconds: the most a wedged daemon may delay the agent's turn
MAX_MESSAGES = 50  # per hook call; the rest wait for the next turn
CONTEXT_EVENTS = ("SessionStart", "UserPromptSubmit")


class HookEvent(msgspec.Struct):
    """The fields of a Claude Code hook event that the hook reads (the others are ignored)."""

    hook_event_name: str
    stop_hook_active: bool = False


def parse_event(data: bytes) -> HookEvent:
    """The event read from stdin; ``ValueError`` naming what is wrong."""
    try:
        return msgspec.json.decode(data, type=HookEvent)
    except msgspec.DecodeError as e:
        raise ValueError(f"not a Claude Code hook event: {e}") from None


def wants_mail(event: HookEvent, continue_on_mail: bool) -> bool:
    """Whether the event is one the hook answers with messages (otherwise it need not ask the daemon)."""
    if event.hook_event_name in CONTEXT_EVENTS:
        return True
    return event.hook_event_name == "Stop" and continue_on_mail and not event.stop_hook_active


def answer(event: HookEvent, messages: list[protocol.MessageInfo], agent: str) -> dict[str, object] | None:
    """The hook's output for ``event`` once ``messages`` were fetched; None: print nothing."""
    if not messages:
        return None
    text = describe(messages, agent)
    if event.hook_event_name == "Stop":
        return {"decision": "block", "reason": f"{text}\n\nHandle these messages before you stop."}
    return {"hookSpecificOutput": {"hookEventName": event.hook_event_name, "additionalContext": text}}


def describe(messages: list[protocol.MessageInfo], agent: str) -> str:
    """The messages as the model reads them: who sent what, with the ids that reply and acknowledge take."""
    n = len(messages)
    lines = [
        f"coordd: {n} new message{'s' if n != 1 else ''} for you, agent {agent} (answer with the coordd MCP tool"
        " `reply`, or `coordctl reply ID -`; acknowledge with `acknowledge` once handled):"
    ]
    for m in messages:
        about = [f"from {m.sender or 'unknown sender'}", human.timestamp(m.created)]
        if m.priority != "regular":
            about.append(m.priority)
        if m.reply_to is not None:
            about.append(f"re: #{m.reply_to}")
        if m.subject:
            about.append(f"subject: {m.subject}")
        lines += ["", f"--- message #{m.id}, {', '.join(about)}", m.body.rstrip("\n")]
    return "\n".join(lines)


def run(data: bytes, agent: str, continue_on_mail: bool, client: Client, ack: bool = False) -> tuple[bytes, str | None]:
    """The hook from stdin's bytes: what to print on stdout, and the one line for stderr (or None)."""
    try:
        event = parse_event(data)
    except ValueError as e:
        return b"", f"coordctl hook: {e}; nothing added"
    if not wants_mail(event, continue_on_mail):
        return b"", None
    try:
        messages = client.inbox(agent, limit=MAX_MESSAGES, ack=ack)
    except CoordError as e:
        return b"", f"coordctl hook: no coordd messages added: [{e.code}] {e.describe()}"
    out = answer(event, messages, agent)
    return (b"" if out is None else msgspec.json.encode(out) + b"\n"), None
