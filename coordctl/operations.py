"""Every client operation, defined once, by code that does no I/O.

An operation is a function that builds its request from the method's
arguments, decorated with ``@operation``: which reply type the request calls
for and what the method returns from it. ``Client`` and ``AsyncClient``
inherit every operation as a method (from ``BlockingOperations`` and
``AsyncOperations``), so they differ only in how bytes move: each implements
``_call(request, timeout)``, which sends a request and returns its reply.

To add an operation: its request and reply types in ``protocol.py``, and one
``@operation`` function in ``Operations`` below (see docs/architecture.md).
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import msgspec

from coordctl import protocol, trust
from coordctl.errors import CoordError
from coordctl.paths import default_socket_path

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable, Mapping
    from typing import Concatenate

# The largest reply a client reads (``max_reply_bytes``), so that a length header from a broken or hostile
# peer cannot make it allocate gigabytes. coordd's replies stay near its daemon.max_frame_bytes (1 MiB by
# default: a history page holds what fits in it); only a single message larger than this needs more.
MAX_REPLY_BYTES = 64 << 20

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", bound=protocol.Reply)


def expect(reply: protocol.Reply, cls: type[R]) -> R:
    """``reply``, checked to be the reply type its request calls for."""
    if type(reply) is not cls:
        raise CoordError("protocol_error", f"expected a {cls.__name__} reply, got {type(reply).__name__}")
    return reply


def to_new_messages(messages: Iterable[protocol.NewMessage | Mapping[str, object]]) -> list[protocol.NewMessage]:
    """Validate batch items client-side, so a typo fails before anything is sent."""
    out = []
    for i, m in enumerate(messages):
        if type(m) is not protocol.NewMessage:
            try:
                m = msgspec.convert(m, protocol.NewMessage)
            except msgspec.ValidationError as e:
                raise CoordError("bad_request", f"messages[{i}]: {e}") from None
        out.append(m)
    return out


class Operation(Generic[P, T]):
    """One operation: ``build`` makes its request from the method's arguments
    (``self``, the client, is unused), ``reply`` is the reply type it calls for
    and ``result`` picks the method's result out of it (default: the reply
    itself). ``held``, given the request, says how long the daemon may wait
    before it answers (``send`` with ``wait``), so that the client waits longer.
    Each client has it as a method of the same name (see ``_add_methods``).
    """

    def __init__(
        self,
        build: Callable[Concatenate[Any, P], protocol.Request],
        reply: type[Any],
        result: Callable[[Any], T] | None,
        held: Callable[[Any], float | None] | None,
    ) -> None:
        self.build = build
        self.reply = reply
        self.result = result
        self.held = held
        # What help() shows for the clients' methods: the definition's signature, returning the result.
        self.shown = types.FunctionType(
            build.__code__, build.__globals__, build.__name__, build.__defaults__, build.__closure__
        )
        self.shown.__kwdefaults__ = build.__kwdefaults__
        returns = f"protocol.{reply.__name__}" if result is None else result.__annotations__.get("return", "Any")
        self.shown.__annotations__ = {**build.__annotations__, "return": returns}

    def reply_timeout(self, request: protocol.Request, timeout: float | None) -> float | None:
        """How long a client that waits ``timeout`` for a reply waits for this
        request's: longer than the daemon may hold it back."""
        if self.held is None or timeout is None:
            return timeout
        held = self.held(request)
        if held is None:  # the daemon's own limit, which we do not know
            return None
        return timeout + held

    def decode(self, reply: protocol.Reply) -> T:
        """The method's result, from the reply (an ``Error`` reply is raised before this)."""
        checked: Any = reply if type(reply) is self.reply else expect(reply, self.reply)
        return checked if self.result is None else self.result(checked)

    if TYPE_CHECKING:  # what each client's method is to mypy and IDEs (at run time, see _add_methods)

        @overload
        def __get__(self, client: None, owner: type[Any]) -> Operation[P, T]: ...
        @overload
        def __get__(self, client: BlockingOperations, owner: type[Any]) -> Callable[P, T]: ...
        @overload
        def __get__(self, client: AsyncOperations, owner: type[Any]) -> Callable[P, Coroutine[Any, Any, T]]: ...
        def __get__(self, client: object, owner: type[Any]) -> object: ...


if TYPE_CHECKING:
    Q = TypeVar("Q", bound=protocol.Request)
    Held = Callable[[Q], float | None] | None


@overload
def operation(
    reply: type[R], *, held: Held[Q] = None
) -> Callable[[Callable[Concatenate[Any, P], Q]], Operation[P, R]]: ...
@overload
def operation(
    reply: type[R], result: Callable[[R], T], *, held: Held[Q] = None
) -> Callable[[Callable[Concatenate[Any, P], Q]], Operation[P, T]]: ...
def operation(
    reply: type[Any], result: Callable[[Any], Any] | None = None, *, held: Held[Any] = None
) -> Callable[[Callable[..., Any]], Operation[Any, Any]]:
    """Make the decorated function, which builds a request, an operation: a
    method of both clients, with its signature and docstring, that sends the
    request and returns the result it picks out of the ``reply``."""
    return lambda build: Operation(build, reply, result, held)


# Results picked out of replies.
def _id(reply: protocol.Sent) -> int:
    return reply.id


def _ids(reply: protocol.Ids) -> list[int]:
    return reply.ids


def _agents(reply: protocol.AgentList) -> list[protocol.AgentInfo]:
    return reply.agents


def _text(reply: protocol.MetricsText) -> str:
    return reply.text


def _messages(reply: protocol.Page) -> list[protocol.MessageInfo]:
    return reply.messages


def _changed(reply: protocol.Acked) -> int:
    return reply.changed


def _count(reply: protocol.Count) -> int:
    return reply.count


def _until_delivered(send: protocol.Send) -> float | None:
    """With ``wait``, the daemon answers once the message is delivered (read, acked), or at ``timeout``."""
    return send.timeout if send.wait else 0.0


def _until_arrival(inbox: protocol.Inbox) -> float:
    """The daemon answers an empty inbox at once, or once a message arrives, at most ``wait`` later."""
    return inbox.wait


class Operations:
    """Every operation: each function here builds its request, and its
    ``@operation`` says which reply that calls for and what the method returns.

    Also the settings both clients take, so that they are written once."""

    def __init__(
        self,
        socket_path: str | None = None,
        timeout: float | None = None,
        *,
        allow_uids: Iterable[int] | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout  # seconds for connect and for each reply; None: no limit
        self.max_reply_bytes = max_reply_bytes
        self._trusted = trust.trusted_uids(allow_uids)  # whose daemon we talk to (coordctl.trust)
        self._rid = 0
        self._init_connection()

    def _init_connection(self) -> None:
        """The client's own connection state (no connection yet: it connects on first use)."""
        raise NotImplementedError

    @operation(protocol.Sent, _id, held=_until_delivered)
    def send(
        self,
        to: str,
        body: str,
        *,
        priority: protocol.Priority = "regular",
        sender: str | None = None,
        kind: str | None = None,
        tags: Iterable[str] | None = None,
        key: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        wait_for: protocol.Receipt = "delivered",
        reply_to: int | None = None,
        subject: str | None = None,
    ) -> protocol.Send:
        """Queue one message; returns its id once the daemon has committed it.

        With ``wait=True`` returns only once it is delivered; a failure or a
        ``timeout`` (seconds; default: the daemon's) raises ``not_delivered``.
        ``wait_for="read"`` or ``"acked"`` waits further, until its recipient
        has read it (``inbox``) or acknowledged it (``ack``); past ``timeout``
        (the whole wait) a delivered message raises ``timeout``. ``reply_to``
        (a message id) puts it in that message's thread; ``subject`` is one line.
        ``to="@GROUP"`` gives it to one member of the group, the one the group's
        ``pick`` chooses (``get`` shows which: ``to``, with ``group`` "@GROUP").
        """
        return protocol.Send(
            to=to,
            body=body,
            priority=priority,
            sender=sender,
            kind=kind,
            tags=list(tags) if tags else [],
            key=key,
            wait=wait,
            timeout=timeout,
            wait_for=wait_for,
            reply_to=reply_to,
            subject=subject,
        )

    @operation(protocol.Sent, _id)
    def reply(self, message_id: int, body: str, *, sender: str | None = None) -> protocol.ReplyRequest:
        """Answer message ``message_id``: sent to its sender, from ``sender`` (default: its recipient), with
        its subject, in its thread; returns the id. A message whose sender is none or not a configured agent
        is refused (``bad_state``, ``unknown_agent``)."""
        return protocol.ReplyRequest(message_id=message_id, body=body, sender=sender)

    @operation(protocol.Page, _messages)
    def thread(self, message_id: int, *, limit: int = 1000) -> protocol.Thread:
        """Every message of ``message_id``'s thread (the first ``limit``), in id order."""
        return protocol.Thread(message_id=message_id, limit=limit)

    @operation(protocol.Ids, _ids)
    def batch(self, messages: Iterable[protocol.NewMessage | Mapping[str, object]]) -> protocol.Batch:
        """Queue many messages in one request (one commit); returns their ids in order."""
        return protocol.Batch(messages=to_new_messages(messages))

    @operation(protocol.Ids, _ids)
    def broadcast(
        self,
        body: str,
        *,
        group: str | None = None,
        priority: protocol.Priority = "regular",
        sender: str | None = None,
        kind: str | None = None,
        tags: Iterable[str] | None = None,
        key: str | None = None,
        subject: str | None = None,
        include_sender: bool = False,
    ) -> protocol.Broadcast:
        """Queue the message for every agent (or every agent in ``group``) but its sender, unless
        ``include_sender``; returns the ids."""
        return protocol.Broadcast(
            body=body,
            group=group,
            priority=priority,
            sender=sender,
            kind=kind,
            tags=list(tags) if tags else [],
            key=key,
            subject=subject,
            include_sender=include_sender,
        )

    @operation(protocol.StatusInfo)
    def status(self) -> protocol.StatusRequest:
        """The daemon and every agent's queue."""
        return protocol.StatusRequest()

    @operation(protocol.Page)
    def history(
        self,
        *,
        agent: str | None = None,
        sender: str | None = None,
        status: protocol.Status | None = None,
        since: float | None = None,
        until: float | None = None,
        contains: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
        search: str | None = None,
    ) -> protocol.History:
        """One page of messages, newest first; pass ``page.cursor`` back for older ones. With ``search``
        (words, ``"a phrase"``, ``prefix*``; every word must match, in the subject or the body), only the
        matches, best match first (bm25), with the other filters applied too; ``page.cursor`` then goes on
        down the ranking."""
        return protocol.History(
            agent=agent,
            sender=sender,
            status=status,
            since=since,
            until=until,
            contains=contains,
            limit=limit,
            cursor=cursor,
            search=search,
        )

    @operation(protocol.Message)
    def get(self, message_id: int) -> protocol.Get:
        """One message, with its delivery attempts."""
        return protocol.Get(message_id=message_id)

    @operation(protocol.Sent, _id)
    def retry(self, message_id: int) -> protocol.Retry:
        """Queue a failed message again."""
        return protocol.Retry(message_id=message_id)

    @operation(protocol.Sent, _id)
    def cancel(self, message_id: int) -> protocol.Cancel:
        """Cancel a message that is still queued."""
        return protocol.Cancel(message_id=message_id)

    @operation(protocol.Count, _count)
    def retry_many(self, agent: str, *, since: float | None = None, dry_run: bool = False) -> protocol.RetryMany:
        """Queue again every failed message of ``agent`` (created since ``since``, unix seconds); returns how
        many (``dry_run=True``: how many would be, changing nothing)."""
        return protocol.RetryMany(agent=agent, since=since, dry_run=dry_run)

    @operation(protocol.Count, _count)
    def cancel_many(self, agent: str, *, since: float | None = None, dry_run: bool = False) -> protocol.CancelMany:
        """Cancel every message still queued for ``agent`` (created since ``since``); returns how many
        (``dry_run=True``: how many would be). Messages being delivered are left alone."""
        return protocol.CancelMany(agent=agent, since=since, dry_run=dry_run)

    @operation(protocol.Sent, _id)
    def resend(self, message_id: int) -> protocol.Resend:
        """Queue a new copy of message ``message_id`` (any status) to its recipient; returns the copy's id."""
        return protocol.Resend(message_id=message_id)

    @operation(protocol.PauseState)
    def pause(self, agent: str, *, duration: float | None = None) -> protocol.Pause:
        """Hold ``agent``'s deliveries (its messages queue) until ``resume``, or for ``duration`` seconds."""
        return protocol.Pause(agent=agent, duration=duration)

    @operation(protocol.PauseState)
    def resume(self, agent: str) -> protocol.Resume:
        """Deliver ``agent``'s held messages again, in order."""
        return protocol.Resume(agent=agent)

    @operation(protocol.Page, _messages, held=_until_arrival)
    def inbox(
        self, agent: str, *, unread: bool = True, limit: int = 50, wait: float = 0.0, ack: bool = False
    ) -> protocol.Inbox:
        """``agent``'s delivered messages, oldest first (``unread``: only those not read yet), at most
        ``limit``; they are marked read (``ack=True``: acknowledged too). With ``wait`` (seconds) and
        none there, the daemon answers as soon as one is delivered, or with none once ``wait`` is up.
        A pull agent's (``unread``) is its delivery: its queued messages, urgent first, each leased for
        ``[pull] lease_s``; one not acknowledged by then is returned again (``fetches`` one higher)."""
        return protocol.Inbox(agent=agent, unread=unread, limit=limit, wait=wait, ack=ack)

    @operation(protocol.Acked, _changed)
    def ack(self, agent: str, ids: Iterable[int]) -> protocol.Ack:
        """``agent`` acknowledges its messages ``ids``; returns how many were not acknowledged before.
        A message of another agent is refused (``not_recipient``), one not delivered (a pull agent's: not
        fetched) too (``bad_state``), and then none is acknowledged."""
        return protocol.Ack(agent=agent, ids=list(ids))

    @operation(protocol.AgentList, _agents)
    def agents(self) -> protocol.Agents:
        """The configured agents, with their transport's health."""
        return protocol.Agents()

    @operation(protocol.Pong)
    def ping(self) -> protocol.Ping:
        """The daemon's version and protocol version."""
        return protocol.Ping()

    @operation(protocol.Reloaded)
    def reload(self) -> protocol.Reload:
        """Make the daemon re-read its config file (as SIGHUP does); says what changed."""
        return protocol.Reload()

    @operation(protocol.MetricsText, _text)
    def metrics(self) -> protocol.Metrics:
        """Every metric, in the Prometheus text format (what the HTTP endpoint serves, if configured)."""
        return protocol.Metrics()

    @operation(protocol.Onboarded)
    def onboard(self, agent: str, message: str | None = None) -> protocol.Onboard:
        """Run gui ``agent``'s onboarding sequence now, pasting ``message`` (default: its
        ``gui.onboarding_message``); returns once it ran."""
        return protocol.Onboard(agent=agent, message=message)

    @operation(protocol.PointerAt)
    def pointer(self) -> protocol.Pointer:
        """Where the mouse is on the daemon's X display."""
        return protocol.Pointer()


class BlockingOperations(Operations):
    """The base of ``Client``: each operation is a method that returns its result."""

    timeout: float | None  # seconds to wait for a reply; None: no limit

    def _call(self, request: protocol.Request, timeout: float | None) -> protocol.Reply:
        """Send ``request`` and return its reply, waiting at most ``timeout``
        seconds (``None``: no limit); an ``Error`` reply is raised as ``CoordError``."""
        raise NotImplementedError


class AsyncOperations(Operations):
    """The base of ``AsyncClient``: each operation is a coroutine method."""

    timeout: float | None

    async def _call(self, request: protocol.Request, timeout: float | None) -> protocol.Reply:
        """As ``BlockingOperations._call``, awaited."""
        raise NotImplementedError


def _blocking(op: Operation[Any, Any]) -> Callable[..., Any]:
    build = op.build

    def method(self: BlockingOperations, *args: Any, **kwargs: Any) -> Any:
        request = build(self, *args, **kwargs)
        return op.decode(self._call(request, op.reply_timeout(request, self.timeout)))

    return method


def _awaitable(op: Operation[Any, Any]) -> Callable[..., Any]:
    build = op.build

    async def method(self: AsyncOperations, *args: Any, **kwargs: Any) -> Any:
        request = build(self, *args, **kwargs)
        return op.decode(await self._call(request, op.reply_timeout(request, self.timeout)))

    return method


def _add_methods(cls: type[Operations], make: Callable[[Operation[Any, Any]], Callable[..., Any]]) -> None:
    """Give ``cls`` a method for each operation, made by ``make``: a plain
    function, which Python binds as fast as any method."""
    for name, op in vars(Operations).items():
        if isinstance(op, Operation):
            method = make(op)
            method.__name__ = name
            method.__qualname__ = f"{cls.__qualname__}.{name}"
            method.__doc__ = op.build.__doc__
            method.__wrapped__ = op.shown  # type: ignore[attr-defined]  # for inspect.signature, and so help()
            setattr(cls, name, method)


_add_methods(BlockingOperations, _blocking)
_add_methods(AsyncOperations, _awaitable)
