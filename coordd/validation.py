"""Is a request well-formed? The checks on its fields that need nothing but the request and the config.

Each failure raises Refused("bad_request" or "unknown_agent") with a message that
names the field and says what to change. Queue limits and idempotency keys,
which depend on what is queued, are coordd.admission's.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from operator import attrgetter

from coordctl import protocol as p
from coordd.model import BOUNCE, Refused

MAX_NAME = 64  # sender, kind, tag
MAX_KEY = 256
MAX_SUBJECT = 200
MAX_TAGS = 16
MAX_PAGE = 1000
MAX_WAIT_S = 3600.0
MAX_ID = (1 << 63) - 1  # SQLite's largest integer
# The one-line fields of a message, each with its length limit: what check_message and all_valid check alike.
LINE_FIELDS = (("sender", MAX_NAME), ("kind", MAX_NAME), ("key", MAX_KEY), ("subject", MAX_SUBJECT))
# Control characters: C0 but tab and newline, DEL, C1. In a terminal they are keystrokes, not text.
BODY_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Senders, kinds, tags and keys are each one line (of a header, of a table): no control character,
# and no line break of any kind: C0 has LF, VT, FF, CR and FS/GS/RS, C1 has NEL (U+0085), and
# Unicode adds the line and paragraph separators U+2028 and U+2029.
NAME_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Names for the characters an error quotes (unicodedata has none for controls).
CONTROL_NAMES = {
    0x00: "NULL",
    0x07: "BELL",
    0x08: "BACKSPACE",
    0x09: "TAB",
    0x0A: "LINE FEED",
    0x0B: "LINE TABULATION",
    0x0C: "FORM FEED",
    0x0D: "CARRIAGE RETURN",
    0x1B: "ESCAPE",
    0x1C: "FILE SEPARATOR",
    0x1D: "GROUP SEPARATOR",
    0x1E: "RECORD SEPARATOR",
    0x1F: "UNIT SEPARATOR",
    0x7F: "DELETE",
    0x85: "NEXT LINE",
    0x9B: "CONTROL SEQUENCE INTRODUCER",
    0x2028: "LINE SEPARATOR",
    0x2029: "PARAGRAPH SEPARATOR",
}


def char_name(ch: str) -> str:
    """``U+2028 LINE SEPARATOR``, ``U+001B ESCAPE``, or just ``U+0081``."""
    name = CONTROL_NAMES.get(ord(ch))
    return f"U+{ord(ch):04X} {name}" if name else f"U+{ord(ch):04X}"


def check_ids(req: p.Request) -> None:
    """A message id or cursor must fit SQLite's integers."""
    for field in ("message_id", "cursor"):
        value = getattr(req, field, None)
        if value is not None and not -MAX_ID <= value <= MAX_ID:
            raise Refused("bad_request", f"{field} {value} is out of range: ids are 64-bit integers")


def check_message(
    m: p.NewMessage, agents: Collection[str], control_chars: str, where: str, groups: Collection[str] = ()
) -> None:
    """One message of a send, batch or broadcast (where: its place in the request, e.g. "messages[3].").
    `to` is an agent, or "@NAME" for one member of group NAME (an agent id never starts with "@")."""
    if m.to not in agents:
        if m.to.startswith("@"):
            if m.to[1:] not in groups:
                raise Refused("unknown_group", f"{where}to: {no_group(m.to[1:], groups)}")
        else:
            raise Refused("unknown_agent", f"{where}to: {no_agent(m.to, agents)}")
    if not m.body.strip():
        raise Refused("bad_request", f"{where}body is empty: give the message some text")
    if control_chars == "reject" and (bad := BODY_CONTROL.search(m.body)):
        raise Refused(
            "bad_request",
            f"{where}body has the control character {char_name(bad[0])} at offset "
            f'{bad.start()}, refused by daemon.control_chars = "reject": remove it from the text',
        )
    lines = (("sender", m.sender), ("kind", m.kind), ("key", m.key), ("subject", m.subject))
    for field, value in (*lines, *(("tags", t) for t in m.tags)):
        if value is not None and (bad := NAME_CONTROL.search(value)):
            raise Refused(
                "bad_request",
                f"{where}{field} contains {char_name(bad[0])}: use a single line of "
                "plain text, without line breaks or control characters",
            )
    for field, limit in LINE_FIELDS:
        value = getattr(m, field)
        if value is not None and not 0 < len(value) <= limit:
            raise Refused("bad_request", f"{where}{field} must be 1 to {limit} characters, got {len(value)}")
    if m.kind == BOUNCE:  # what an agent reads as coordd's word that its message failed: no one may forge it
        raise Refused(
            "bad_request", f'{where}kind "{BOUNCE}" is coordd\'s own, for its bounce notices: use another kind'
        )
    if len(m.tags) > MAX_TAGS or any(not 0 < len(t) <= MAX_NAME for t in m.tags):
        raise Refused("bad_request", f"{where}tags: at most {MAX_TAGS} tags of 1 to {MAX_NAME} characters each")


_LINE_GETTERS = tuple((attrgetter(field), limit) for field, limit in LINE_FIELDS)
_TO, _BODY, _KIND, _TAGS = attrgetter("to"), attrgetter("body"), attrgetter("kind"), attrgetter("tags")


def all_valid(
    msgs: Sequence[p.NewMessage], agents: Collection[str], control_chars: str, groups: Collection[str] = ()
) -> bool:
    """Whether check_message passes every one of msgs: checked a field at a time over them all, each distinct
    value once (a batch's messages share their recipients, sender and kind), with one regular-expression scan of
    all the bodies. A batch of 1,000 in a fraction of the time check_message takes for each. False: some message
    fails, and check_message on each in turn says which and why."""
    for to in set(map(_TO, msgs)):
        if to not in agents and not (to.startswith("@") and to[1:] in groups):
            return False
    bodies = list(map(_BODY, msgs))
    if not all(map(str.strip, bodies)):  # a body of nothing but white space
        return False
    # Line feeds are allowed in a body, so joining with them adds nothing the expression refuses.
    if control_chars == "reject" and BODY_CONTROL.search("\n".join(bodies)):
        return False
    for get, limit in _LINE_GETTERS:
        for value in set(map(get, msgs)):
            if value is not None and (not 0 < len(value) <= limit or NAME_CONTROL.search(value)):
                return False
    if BOUNCE in map(_KIND, msgs):
        return False
    for tags in set(map(_TAGS, msgs)):
        if tags and (len(tags) > MAX_TAGS or any(not 0 < len(t) <= MAX_NAME or NAME_CONTROL.search(t) for t in tags)):
            return False
    return True


def no_group(name: str, groups: Collection[str]) -> str:
    """What a refusal says of a group that is not configured."""
    names = ", ".join(sorted(groups)) or "none are configured (an agent joins one with `groups = [...]`)"
    return f"no group named {name!r}; groups: {names}"


def check_not_empty(msgs: list[p.NewMessage], where: str) -> None:
    if not msgs:
        raise Refused("bad_request", f"{where or 'messages'} is empty: give at least one message")


def check_wait_timeout(req: p.Send) -> None:
    if req.wait_for != "delivered" and not req.wait:
        raise Refused("bad_request", f"wait_for {req.wait_for!r} needs wait: set wait to true as well")
    if req.wait and req.timeout is not None and not 0 < req.timeout <= MAX_WAIT_S:
        raise Refused(
            "bad_request", f"timeout must be more than 0 and at most {MAX_WAIT_S:g} seconds, got {req.timeout}"
        )


def check_page(req: p.History, agents: Collection[str], orphans: Collection[str]) -> None:
    if not 1 <= req.limit <= MAX_PAGE:
        raise Refused("bad_request", f"limit must be 1 to {MAX_PAGE}, got {req.limit}")
    if req.agent is not None:
        check_agent(req.agent, agents, orphans)


def check_agent(agent: str, agents: Collection[str], orphans: Collection[str]) -> None:
    """A configured agent, or one whose messages wait for it to be configured again."""
    if agent not in agents and agent not in orphans:
        raise Refused("unknown_agent", f"agent: {no_agent(agent, agents)}")


def no_agent(name: str, agents: Collection[str]) -> str:
    """What a refusal says of an agent that is not configured: the configured ones, and the likely one meant.
    Only on this error path: difflib is imported and run here, never for a good request."""
    import difflib

    close = difflib.get_close_matches(name, list(agents), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no agent named {name!r}{hint}; configured agents: {', '.join(agents)}"


def check_ids_list(ids: list[int], limit: int) -> None:
    if not 1 <= len(ids) <= limit:
        raise Refused("bad_request", f"ids: give 1 to {limit} message ids, got {len(ids)}")
    for value in ids:
        if not -MAX_ID <= value <= MAX_ID:
            raise Refused("bad_request", f"ids: {value} is out of range: ids are 64-bit integers")
