"""The coordd wire protocol: every message type that crosses the socket.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of
msgpack. Requests are a tagged union on the field ``op``; replies a tagged
union on the field ``type``. Every request carries a client-chosen integer
``rid`` that its reply echoes, so a client may pipeline requests on one
connection and match replies as they come (in any order). ``docs/protocol.md``
is the human-readable form of this module.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 1 << 20
HEADER_SIZE = 4

Priority = Literal["regular", "urgent"]
Status = Literal["queued", "delivering", "delivered", "failed", "cancelled"]
TERMINAL_STATUSES = ("delivered", "failed", "cancelled")

# Stable error codes: clients branch on these, so never rename one.
ERROR_CODES = (
    "bad_request",  # the request is malformed or a field has a bad value
    "unknown_agent",  # no agent (or group) by that name is configured
    "unknown_message",  # no message with that id exists (or it was pruned)
    "bad_state",  # the message is not in a state that allows the operation
    "queue_full",  # a per-agent or total queue limit would be exceeded
    "too_large",  # the frame exceeds the daemon's max_frame_bytes
    "storage_error",  # the database refused the write; nothing was stored
    "shutting_down",  # the daemon is stopping and takes no new work
    "not_delivered",  # wait=true and the message failed or was not delivered in time
    "forbidden",  # the peer's uid is not allowed to use this daemon
    "bad_config",  # reload: the config file is invalid; the daemon keeps serving the previous one
    "unavailable",  # the daemon could not be reached (client side), or is at max_connections (rid 0, then closed)
)


class _Req(msgspec.Struct, tag_field="op", kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    rid: int = 0


# --- requests ----------------------------------------------------------------


class NewMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One message to store and deliver; the body of send and of each batch item."""

    to: str
    body: str
    sender: str | None = None
    priority: Priority = "regular"
    kind: str | None = None
    tags: list[str] = []
    key: str | None = None  # idempotency key: the same key returns the first id


class Ping(_Req, tag="ping"):
    pass


class Send(_Req, tag="send"):
    to: str
    body: str
    sender: str | None = None
    priority: Priority = "regular"
    kind: str | None = None
    tags: list[str] = []
    key: str | None = None
    wait: bool = False  # reply only once the message is delivered, failed or timed out
    timeout: float | None = None  # seconds to wait; None means the daemon's default


class Batch(_Req, tag="batch"):
    messages: list[NewMessage]


class Broadcast(_Req, tag="broadcast"):
    body: str
    group: str | None = None  # None: every agent
    sender: str | None = None
    priority: Priority = "regular"
    kind: str | None = None
    tags: list[str] = []
    key: str | None = None  # per-agent key is f"{key}:{agent}"


class StatusRequest(_Req, tag="status"):
    pass


class History(_Req, tag="history"):
    agent: str | None = None
    sender: str | None = None
    status: Status | None = None
    since: float | None = None  # unix seconds, inclusive
    until: float | None = None  # unix seconds, exclusive
    contains: str | None = None  # substring of the body
    limit: int = 50
    cursor: int | None = None  # from the previous page's reply


class Get(_Req, tag="get"):
    message_id: int


class Retry(_Req, tag="retry"):
    message_id: int


class Cancel(_Req, tag="cancel"):
    message_id: int


class Agents(_Req, tag="agents"):
    pass


class Reload(_Req, tag="reload"):
    """Re-read the config file (as SIGHUP does); the reply says what changed."""


Request = Union[Ping, Send, Batch, Broadcast, StatusRequest, History, Get, Retry, Cancel, Agents, Reload]


# --- replies -----------------------------------------------------------------


class _Rep(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    rid: int = 0


class Error(_Rep, tag="error"):
    code: str
    message: str
    message_id: int | None = None


class Pong(_Rep, tag="pong"):
    version: str
    protocol: int


class Sent(_Rep, tag="sent"):
    id: int
    status: Status = "queued"
    duplicate: bool = False  # the idempotency key matched an earlier message


class Ids(_Rep, tag="ids"):
    ids: list[int]


class Attempt(msgspec.Struct, kw_only=True, omit_defaults=True):
    number: int
    started: float
    finished: float
    ok: bool
    error: str | None = None


class MessageInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: int
    to: str
    body: str
    status: Status
    priority: Priority
    created: float
    sender: str | None = None
    kind: str | None = None
    tags: list[str] = []
    key: str | None = None
    attempts: int = 0
    delivered: float | None = None
    error: str | None = None


class Message(_Rep, tag="message"):
    message: MessageInfo
    attempts: list[Attempt] = []


class Page(_Rep, tag="page"):
    messages: list[MessageInfo]
    cursor: int | None = None  # pass back for the next (older) page; None: no more


class AgentInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    transport: str
    groups: list[str] = []
    healthy: bool = True
    reason: str | None = None


class AgentList(_Rep, tag="agents"):
    agents: list[AgentInfo]


class AgentStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    transport: str
    healthy: bool = True
    reason: str | None = None
    queued: int = 0
    in_flight: int = 0
    delivered: int = 0
    failed: int = 0
    cancelled: int = 0
    oldest_queued_age: float | None = None
    last_error: str | None = None


class StatusInfo(_Rep, tag="status"):
    version: str
    pid: int
    uptime: float
    socket: str
    db_path: str
    db_bytes: int
    rows: int
    max_messages: int
    max_age_days: float
    queued: int
    agents: list[AgentStatus]
    orphaned: int = 0  # queued messages for agents no longer configured; re-adding the agent delivers them
    orphaned_agents: list[str] = []
    config_error: str | None = None  # why the last reload failed (the previous config still serves)


class Reloaded(_Rep, tag="reloaded"):
    config: str  # the file read, or "<embedded default>"
    added: list[str] = []
    removed: list[str] = []  # their queued messages stay queued, counted as orphaned
    changed: list[str] = []  # their queues carry over to the new transport
    restart_needed: list[str] = []  # changed keys that take effect only at the next start
    orphaned: int = 0


Reply = Union[Error, Pong, Sent, Ids, Message, Page, AgentList, StatusInfo, Reloaded]


# --- framing -----------------------------------------------------------------

request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)
encoder = msgspec.msgpack.Encoder()


def frame(msg: msgspec.Struct) -> bytes:
    """Encode one message with its length prefix."""
    body = encoder.encode(msg)
    return len(body).to_bytes(HEADER_SIZE, "big") + body
