"""The coordd wire protocol: every message type that crosses the socket.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of
msgpack. Requests are a tagged union on the field ``op``; replies a tagged
union on the field ``type``. Every request carries a client-chosen integer
``rid`` that its reply echoes, so a client may pipeline requests on one
connection and match replies as they come (in any order). ``docs/protocol.md``
is the human-readable form of this module.
"""

# No `from __future__ import annotations` in this module: msgspec resolves every field's annotation when it builds
# a decoder, and a string annotation costs a compile and an eval each (about 250 of them: a third of coordctl's
# start-up).
from typing import Annotated, Literal, get_args

import msgspec

# 2: watch events come in `events` frames (1 sent an `event` frame each). 3: read and acked events, and the
# requests and fields of receipts, inboxes and threads (all additive: a client of protocol 2 keeps working).
PROTOCOL_VERSION = 3
DEFAULT_MAX_FRAME = 1 << 20
HEADER_SIZE = 4
Int64 = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]  # msgpack also holds uint64: refuse past int64

Priority = Literal["regular", "urgent"]
Status = Literal["queued", "delivering", "delivered", "failed", "cancelled"]
TERMINAL_STATUSES = ("delivered", "failed", "cancelled")
Receipt = Literal["delivered", "read", "acked"]  # the points of a message's life a sender can wait for
EventType = Literal["accepted", "delivering", "delivered", "failed", "retried", "cancelled", "read", "acked", "held"]
# The protocol version that brought each event type after the first ones. A client decodes `event` as a literal,
# so a watch is never sent a type newer than the protocol it speaks (Watch.protocol).
EVENT_SINCE = {"read": 3, "acked": 3, "held": 3}

# The kind of a message sent without one, as every view shows it: inbox files and headers, `show`, `history`, JSON.
DEFAULT_KIND = "message"


def events_known_to(protocol: int) -> list[str]:
    """The event types a client of `protocol` can decode; [] when it knows them all."""
    if protocol >= PROTOCOL_VERSION:
        return []
    return [e for e in get_args(EventType) if EVENT_SINCE.get(e, 1) <= protocol]


# Stable error codes: clients branch on these, so never rename one.
ERROR_CODES = (
    "bad_request",  # the request is malformed or a field has a bad value
    "unknown_agent",  # no agent by that name is configured
    "unknown_message",  # no message with that id exists (or it was pruned)
    "bad_state",  # the message is not in a state that allows the operation
    "queue_full",  # a per-agent or total queue limit would be exceeded
    "too_large",  # the frame exceeds the daemon's max_frame_bytes
    "storage_error",  # the database refused the write; nothing was stored
    "storage_full",  # the disk holding the database is full; nothing was stored; retry once space is freed
    "shutting_down",  # the daemon is stopping and takes no new work
    "not_delivered",  # wait=true and the message failed or was not delivered in time
    "forbidden",  # the peer's uid is not allowed to use this daemon
    "bad_config",  # reload: the config file is invalid; the daemon keeps serving the previous one
    "transport_down",  # onboard/pointer: the agent's transport (the X display) is down; nothing was done
    # the daemon could not be reached (client side), or is full: max_connections, none idle (rid 0, closed)
    "unavailable",
    "internal",  # a bug in coordd failed this request (its log has the traceback); the daemon goes on serving
    "timeout",  # send with wait_for read or acked: delivered, but not read (or acked) in time
    "not_recipient",  # ack: the message is another agent's; nothing was acknowledged
    "untrusted_socket",  # client side, never on the wire: the socket is not our own daemon's; nothing was sent
    "unknown_group",  # send to "@NAME", broadcast's group: no agent joins a group by that name; nothing was sent
    "key_conflict",  # the idempotency key is already a message's with another recipient or content; nothing was sent
)

# A broadcast's copy for agent A is stored with the key KEY + U+001F + A. The keys of send and batch may not
# hold control characters (bad_request), so none can equal a copy's key: `standup:Agent-1` sent to Agent-1
# and a broadcast keyed `standup` are two messages. (Stores of schema 1 hold "KEY:A", which could: see
# coordd/store.py's migration 2.)
BROADCAST_KEY_SEP = "\x1f"


def broadcast_key(key: str, agent: str) -> str:
    """The key of the copy for `agent` of a broadcast keyed `key`."""
    return f"{key}{BROADCAST_KEY_SEP}{agent}"


class _Req(msgspec.Struct, tag_field="op", kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    rid: Int64 = 0


# --- requests ----------------------------------------------------------------


class NewMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """One message to store and deliver; the body of send and of each batch item.

    Built to decode fast by the tens of thousands (a batch frame holds up to 80,000): gc=False (strings only,
    so no reference cycle) and `tags` a tuple (no list allocated per message), so the garbage collector has
    none of them to walk, over and over, while the frame decodes.
    """

    to: str
    body: str
    sender: str | None = None
    priority: Priority = "regular"
    kind: str | None = None
    tags: tuple[str, ...] = ()  # on the wire an array of strings, as everywhere
    key: str | None = None  # idempotency key: the same key returns the first id
    reply_to: Int64 | None = None  # the message this one answers: it joins that message's thread
    subject: str | None = None


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
    wait: bool = False  # reply only once the message is delivered (or read, acked), failed or timed out
    timeout: float | None = None  # seconds to wait; None means the daemon's default
    wait_for: Receipt = "delivered"  # with wait: the point to wait for
    reply_to: Int64 | None = None  # the message this one answers: it joins that message's thread
    subject: str | None = None


class Batch(_Req, tag="batch"):
    messages: list[NewMessage]


class Broadcast(_Req, tag="broadcast"):
    body: str
    group: str | None = None  # None: every agent
    sender: str | None = None
    priority: Priority = "regular"
    kind: str | None = None
    tags: list[str] = []
    key: str | None = None  # each agent's copy is stored with the key broadcast_key(key, agent)
    subject: str | None = None
    include_sender: bool = False  # False: a sender that is one of the targets gets no copy


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
    # Full-text search over subject and body (words, "a phrase", prefix*); the page is ranked best match
    # first (bm25), not newest first, and its cursor counts matches already shown (docs/protocol.md).
    search: str | None = None


class Get(_Req, tag="get"):
    message_id: int


class Retry(_Req, tag="retry"):
    message_id: int


class Cancel(_Req, tag="cancel"):
    message_id: int


class RetryMany(_Req, tag="retry_many"):
    """Queue again every failed message of `agent` (created since `since`), in id order (`count` reply)."""

    agent: str
    status: Status = "failed"  # only failed messages can be retried: any other is bad_request
    since: float | None = None  # unix seconds, inclusive; None: any age
    dry_run: bool = False  # only count them


class CancelMany(_Req, tag="cancel_many"):
    """Cancel every message still queued for `agent` (created since `since`) (`count` reply). One being
    delivered, or fetched by a pull agent, is not queued and stays as it is."""

    agent: str
    status: Status = "queued"  # only queued messages can be cancelled: any other is bad_request
    since: float | None = None
    dry_run: bool = False


class Resend(_Req, tag="resend"):
    """Queue a new copy of message `message_id`, whatever its status, to its recipient (`sent` reply: the copy's
    id); the copy's `resent_from` is `message_id`."""

    message_id: Int64


class Pause(_Req, tag="pause"):
    """Hold `agent`'s deliveries: its messages queue but are not delivered until `resume` (or, with `duration`,
    for that many seconds). Kept across restarts (`pause` reply)."""

    agent: str
    duration: float | None = None  # seconds; None: until resumed


class Resume(_Req, tag="resume"):
    """Deliver `agent`'s messages again, in order (`pause` reply; an agent not paused stays as it is)."""

    agent: str


class Agents(_Req, tag="agents"):
    pass


class Reload(_Req, tag="reload"):
    """Re-read the config file (as SIGHUP does); the reply says what changed."""


class Onboard(_Req, tag="onboard"):
    """Run a gui agent's onboarding sequence now (not queued); the reply comes once it ran."""

    agent: str
    message: str | None = None  # None: the configured gui.onboarding_message


class Pointer(_Req, tag="pointer"):
    """Where the mouse is on the daemon's X display (for `coordctl coords capture`)."""


class Watch(_Req, tag="watch"):
    """Stream events as they happen: a `watching` reply, then `event` and `missed` replies, all with this rid."""

    agents: list[str] = []  # only events of these agents; []: every agent
    events: list[EventType] = []  # only events of these types; []: every type the client knows (`protocol`)
    # The protocol version the client speaks: a client that does not say (protocol 2) is sent no event type of a
    # later version, since its decoder would refuse the frame. Clients of this module say PROTOCOL_VERSION.
    protocol: int = 2


class Unwatch(_Req, tag="unwatch"):
    """End a watch on this connection (closing the connection ends them all)."""

    watch: int  # the rid of the watch request


class Metrics(_Req, tag="metrics"):
    """Every metric, in the Prometheus text format (as the HTTP endpoint serves it)."""


class Inbox(_Req, tag="inbox"):
    """An agent's delivered messages, oldest first, marked read (`page` reply; its cursor is always nil)."""

    agent: str
    unread: bool = True  # only those not read yet; false: every delivered message
    limit: int = 50
    wait: float = 0.0  # seconds: if none is there, answer as soon as one arrives, or empty after this long
    ack: bool = False  # acknowledge the returned messages too


class Ack(_Req, tag="ack"):
    """The recipient acknowledges its messages (`acked` reply)."""

    agent: str
    ids: list[Int64]


class ReplyRequest(_Req, tag="reply"):
    """Answer a message: sent to its sender, from `sender` (nil: its recipient), in its thread (`sent` reply)."""

    message_id: Int64
    body: str
    sender: str | None = None


class Thread(_Req, tag="thread"):
    """Every message of a message's thread, in id order (`page` reply; its cursor is always nil)."""

    message_id: Int64
    limit: int = 1000


Request = (
    Ping
    | Send
    | Batch
    | Broadcast
    | StatusRequest
    | History
    | Get
    | Retry
    | Cancel
    | Agents
    | Reload
    | Onboard
    | Pointer
    | Watch
    | Unwatch
    | Metrics
    | Inbox
    | Ack
    | ReplyRequest
    | Thread
    | RetryMany
    | CancelMany
    | Resend
    | Pause
    | Resume
)


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
    # send, reply, retry: whether its recipient is reachable now, as the daemon last found (as AgentInfo's):
    # false while its transport reports itself down or its last delivery attempt failed; `reason` says why.
    healthy: bool = True
    reason: str | None = None


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
    delivered: float | None = None  # when it was delivered (the `delivered` receipt)
    error: str | None = None
    read_at: float | None = None  # when its recipient fetched it through `inbox`
    acked_at: float | None = None  # when its recipient acknowledged it (`ack`, or `inbox` with ack)
    reply_to: int | None = None  # the message this one answers
    thread: int | None = None  # its thread: the id of the thread's first message (its own id if it starts one)
    subject: str | None = None
    fetches: int = 0  # how many times a pull agent fetched it (more than 1: its lease ran out unacked)
    lease_until: float | None = None  # a pull agent's fetch leases it until then; unacked after, it is fetched again
    group: str | None = None  # the group it was sent to ("@NAME"); `to` is the member the group's pick chose
    resent_from: int | None = None  # the message this one is a copy of (`resend`)
    origin: str | None = None  # "NODE:ID": the node and id of a message another node of the cluster forwarded here
    forwarded: float | None = None  # when JetStream took it for another node's agent (that node delivers it)


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
    paused: bool = False  # `pause`: its messages queue but are not delivered
    paused_until: float | None = None  # when the pause ends by itself; None: at `resume`
    node: str | None = None  # in a cluster: the node that serves it (this node's own name for its own agents)
    refused: str | None = None  # in a cluster: why this node does not serve its configured agent (another has it)


class AgentList(_Rep, tag="agents"):
    agents: list[AgentInfo]


class AgentStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    transport: str
    healthy: bool = True
    reason: str | None = None
    down_since: float | None = None  # while down (healthy false): when it went down, epoch seconds
    queued: int = 0
    in_flight: int = 0
    delivered: int = 0
    failed: int = 0
    cancelled: int = 0
    oldest_queued_age: float | None = None
    last_error: str | None = None
    latency_p50: float | None = None  # seconds from accepted to delivered, over the last 5 minutes
    latency_p99: float | None = None
    # A pull agent's (transport "pull"): its backlog is queued + leased; the oldest unacked is the oldest of both.
    leased: int = 0  # fetched, not acknowledged yet: fetched again once its lease ends
    oldest_unacked_age: float | None = None  # seconds since the oldest of its backlog was sent
    paused: bool = False  # `pause`: its messages queue but are not delivered
    paused_since: float | None = None
    paused_until: float | None = None  # when the pause ends by itself; None: at `resume`
    inbox_files: int | None = None  # an inbox agent's message files on disk ([retention] inbox_max_files bounds them)


class NodeSeen(msgspec.Struct, kw_only=True, omit_defaults=True):
    node: str
    agents: int = 0
    live: bool = True  # heard from within 3 heartbeats
    updated: float | None = None  # its last heartbeat, epoch seconds


class ClusterStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    node: str  # this node's name
    connected: bool = False  # to NATS
    since: float | None = None  # when it connected, or (not connected) since when it is not
    server: str | None = None  # the NATS server it is connected to
    error: str | None = None  # the last connection error
    backlog: int = 0  # messages for other nodes' agents not yet taken by JetStream
    nodes: list[NodeSeen] = []  # the other nodes seen in the directory
    refused: list[str] = []  # this node's agents another live node serves: "AGENT (node NODE)"


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
    metrics_url: str | None = None  # where the Prometheus endpoint listens ([metrics] listen)
    metrics_error: str | None = None  # why it does not, though configured
    watchers: int = 0  # active watch subscriptions
    queued_bytes: int = 0  # what the bodies of the undelivered messages hold in memory (orphaned ones too)
    max_queued_bytes: int = 0  # queue.max_bytes: past it, sends are refused with queue_full
    http_url: str | None = None  # where the dashboard listens ([http] listen), without its token
    http_error: str | None = None  # why it does not, though configured
    cluster: ClusterStatus | None = None  # [cluster]: the link to NATS and the other nodes; None: a single node


class Reloaded(_Rep, tag="reloaded"):
    config: str  # the file read, or "<embedded default>"
    added: list[str] = []
    removed: list[str] = []  # their queued messages stay queued, counted as orphaned
    changed: list[str] = []  # their queues carry over to the new transport
    restart_needed: list[str] = []  # changed keys that take effect only at the next start
    orphaned: int = 0


class Onboarded(_Rep, tag="onboarded"):
    agent: str
    steps: int  # GUI steps run


class PointerAt(_Rep, tag="pointer"):
    x: int
    y: int
    screen_width: int
    screen_height: int


class Watching(_Rep, tag="watching"):
    buffer: int  # events held for this watch while the client is behind; past it they are counted as missed


class Event(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):  # gc=False: scalars only, no cycles
    """Something happened to a message. Pushed to a watch in an `Events` batch."""

    event: EventType
    id: int  # the message
    agent: str  # its recipient
    time: float  # when it happened (accepted: when the message was stored)
    sender: str | None = None
    priority: Priority = "regular"
    attempt: int = 0  # the attempt's number (delivering, delivered, retried, failed)
    error: str | None = None  # retried, failed: why the attempt failed (retried by a retry request: nil)
    retry_in: float | None = None  # retried after a failed attempt: seconds until the next one
    latency: float | None = None  # delivered: seconds from accepted to delivered
    preview: str | None = None  # accepted: the body's first line, at most 80 characters
    group: str | None = None  # sent to a group ("@NAME"): `agent` is the member its pick chose (not on read/acked)
    reason: str | None = None  # held: why the message waits (its agent is down: the reason)


class Events(_Rep, tag="events"):
    """Events of a watch (the watch's rid), in the order they happened: as many as waited, in one frame."""

    events: list[Event]


class Missed(_Rep, tag="missed"):
    """The watch fell behind and `count` events were dropped here, between the events before and after it."""

    count: int


class Unwatched(_Rep, tag="unwatched"):
    watch: int  # no more events come for this rid


class MetricsText(_Rep, tag="metrics"):
    text: str  # Prometheus text exposition format 0.0.4


class Acked(_Rep, tag="acked"):
    changed: int  # messages acknowledged by this request (those acked before are not counted)


class Count(_Rep, tag="count"):
    """retry_many, cancel_many: how many messages were retried or cancelled (with dry_run: would be)."""

    count: int


class PauseState(_Rep, tag="pause"):
    """pause, resume: the agent's pause as it is now."""

    agent: str
    paused: bool
    since: float | None = None  # when it was paused
    until: float | None = None  # when the pause ends by itself; None: at `resume`
    queued: int = 0  # its messages waiting


Reply = (
    Error
    | Pong
    | Sent
    | Ids
    | Message
    | Page
    | AgentList
    | StatusInfo
    | Reloaded
    | Onboarded
    | PointerAt
    | Watching
    | Events
    | Missed
    | Unwatched
    | MetricsText
    | Acked
    | Count
    | PauseState
)


# --- framing -----------------------------------------------------------------

reply_decoder = msgspec.msgpack.Decoder(Reply)
encoder = msgspec.msgpack.Encoder()
# The daemon's decoder, built on first use (module __getattr__ below): a coordctl process never decodes a request,
# and building the decoder of every request type is a millisecond of each CLI start.
request_decoder: "msgspec.msgpack.Decoder[Request]"


def __getattr__(name: str) -> object:
    if name == "request_decoder":
        globals()[name] = decoder = msgspec.msgpack.Decoder(Request)  # from now on an ordinary module attribute
        return decoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def frame(msg: msgspec.Struct) -> bytes:
    """Encode one message with its length prefix."""
    body = encoder.encode(msg)
    return len(body).to_bytes(HEADER_SIZE, "big") + body
