"""``coordctl mcp --agent NAME``: coordd as MCP tools, over stdio, for one agent.

A coding agent (Claude Code, Codex CLI, Cursor, Gemini CLI) starts this as its MCP server and calls
the tools below as that agent: what it sends is from the agent, and it reads only the agent's own
messages. Each tool's arguments are a msgspec Struct: the one definition gives the JSON schema the
model sees (field descriptions included) and checks the arguments it sends. A daemon error comes
back as a tool error (``isError``) whose text is ``error [CODE]: message``, and whose structured
content is ``{"error": {"code": ..., "message": ...}}``, so that the model can act on the code.

The server keeps one connection to the daemon (an ``AsyncClient``), which reconnects by itself on
the next call after the daemon restarts. This module is the only one that imports the ``mcp``
extra (``pip install 'coordd[mcp]'``); the CLI loads it only for ``coordctl mcp``.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import anyio
import mcp_types as types
import msgspec
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server

from coordctl import __version__, protocol
from coordctl.aclient import AsyncClient
from coordctl.errors import CoordError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from mcp.server.context import ServerRequestContext

# Seconds to wait for the daemon's reply (fetch_inbox waits its wait_s on top): a wedged daemon
# must not hang the agent's tool call for ever.
IO_TIMEOUT = 60.0
MAX_WAIT_S = 600  # fetch_inbox's wait_s at most: an agent's MCP client gives up on a tool call long before 3600 s

Id = Annotated[int, msgspec.Meta(ge=1)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=100, description="At most this many messages (1 to 100).")]


class Args(msgspec.Struct, forbid_unknown_fields=True):
    """A tool's arguments; the subclass's docstring is the tool's description."""

    # Changes nothing (clients may then run the tool without asking); fetch_inbox is not: it marks messages read.
    read_only: ClassVar[bool] = False


class SendMessage(Args):
    """Send a message to another agent of your team, through coordd. It is stored at once and delivered to the
    recipient in order (urgent messages first); the result is its id, which message_status and a reply's
    reply_to refer to. Use list_agents to see who can be messaged."""

    to: Annotated[str, msgspec.Meta(description="The recipient agent's id, e.g. Agent-2 (see list_agents).")]
    body: Annotated[str, msgspec.Meta(description="The message text: say what you need, with enough context.")]
    priority: Annotated[
        Literal["regular", "urgent"],
        msgspec.Meta(description="urgent is delivered before every regular message; use it sparingly."),
    ] = "regular"
    subject: Annotated[str | None, msgspec.Meta(description="An optional one-line subject (1 to 200 characters).")] = (
        None
    )
    reply_to: Annotated[
        Id | None, msgspec.Meta(description="The id of the message this one answers: it joins that thread.")
    ] = None


class Reply(Args):
    """Answer a message you received: the answer goes to its sender, in the same thread and with the same
    subject. The result is the new message's id."""

    message_id: Annotated[Id, msgspec.Meta(description="The id of the message to answer (from fetch_inbox).")]
    body: Annotated[str, msgspec.Meta(description="The answer's text.")]


class Broadcast(Args):
    """Send one message to every other agent of the team, or of one group (you get no copy yourself). The result
    is one message id per recipient."""

    body: Annotated[str, msgspec.Meta(description="The message text.")]
    group: Annotated[
        str | None, msgspec.Meta(description="Only the agents of this group (see list_agents); omit for all.")
    ] = None


class FetchInbox(Args):
    """Fetch the messages other agents sent you, oldest first. Fetched messages are marked read (their sender
    sees that); call acknowledge once you have acted on them. With wait_s, waits up to that many seconds for a
    message when none is there."""

    unread_only: Annotated[bool, msgspec.Meta(description="Only messages not fetched before; false: all.")] = True
    limit: Limit = 20
    wait_s: Annotated[
        float,
        msgspec.Meta(
            ge=0, le=MAX_WAIT_S, description=f"Seconds to wait for a message if none is there (0 to {MAX_WAIT_S})."
        ),
    ] = 0


class Acknowledge(Args):
    """Acknowledge messages you received and have acted on: their senders see them as acknowledged. The result
    says how many were not acknowledged before."""

    ids: Annotated[
        list[Id], msgspec.Meta(min_length=1, max_length=1000, description="The ids of your messages to acknowledge.")
    ]


class ListAgents(Args):
    """List the agents of the team: their ids, groups, whether their delivery works (healthy), and whether they
    are busy (have messages waiting to be delivered to them)."""

    read_only = True


class SearchMessages(Args):
    """Search the messages you sent or received, by their words: full-text over subject and body (words, "a
    phrase", prefix*), best match first."""

    read_only = True

    query: Annotated[str, msgspec.Meta(min_length=1, description='What to look for: words, "a phrase" or prefix*.')]
    limit: Limit = 20


class MessageStatus(Args):
    """The status of a message you sent or received: queued, delivered, failed..., and its receipts: when it was
    delivered, read (fetched by its recipient) and acknowledged."""

    read_only = True

    id: Annotated[Id, msgspec.Meta(description="The message's id.")]


def iso(t: float | None) -> str | None:
    """A unix time as ISO 8601 UTC, which a model reads without arithmetic."""
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def message_view(m: protocol.MessageInfo) -> dict[str, Any]:
    """A message as the model sees it: what it says, from whom, its thread and its receipts; nothing unset."""
    view = {
        "id": m.id,
        "from": m.sender,
        "to": m.to,
        "subject": m.subject,
        "priority": m.priority,
        "body": m.body,
        "reply_to": m.reply_to,
        "thread": m.thread,
        "sent_at": iso(m.created),
        "status": m.status,
        "delivered_at": iso(m.delivered),
        "read_at": iso(m.read_at),
        "acked_at": iso(m.acked_at),
    }
    return {k: v for k, v in view.items() if v is not None}


class AgentTools:
    """The tools, acting as ``agent`` over ``client``: each takes its Args and returns a JSON object."""

    def __init__(self, agent: str, client: AsyncClient) -> None:
        self.agent = agent
        self.client = client
        self.tools: dict[str, tuple[type[Args], Callable[[Any], Awaitable[dict[str, Any]]]]] = {
            "send_message": (SendMessage, self.send_message),
            "reply": (Reply, self.reply),
            "broadcast": (Broadcast, self.broadcast),
            "fetch_inbox": (FetchInbox, self.fetch_inbox),
            "acknowledge": (Acknowledge, self.acknowledge),
            "list_agents": (ListAgents, self.list_agents),
            "search_messages": (SearchMessages, self.search_messages),
            "message_status": (MessageStatus, self.message_status),
        }

    async def send_message(self, a: SendMessage) -> dict[str, Any]:
        new_id = await self.client.send(
            a.to, a.body, priority=a.priority, sender=self.agent, subject=a.subject, reply_to=a.reply_to
        )
        return {"id": new_id}

    async def reply(self, a: Reply) -> dict[str, Any]:
        return {"id": await self.client.reply(a.message_id, a.body, sender=self.agent)}

    async def broadcast(self, a: Broadcast) -> dict[str, Any]:
        return {"ids": await self.client.broadcast(a.body, group=a.group, sender=self.agent)}

    async def fetch_inbox(self, a: FetchInbox) -> dict[str, Any]:
        found = await self.client.inbox(self.agent, unread=a.unread_only, limit=a.limit, wait=a.wait_s)
        return {"messages": [message_view(m) for m in found]}

    async def acknowledge(self, a: Acknowledge) -> dict[str, Any]:
        return {"acknowledged": await self.client.ack(self.agent, a.ids)}

    async def list_agents(self, a: ListAgents) -> dict[str, Any]:
        found, status = await asyncio.gather(self.client.agents(), self.client.status())
        queues = {s.id: s for s in status.agents}
        agents = []
        for info in found:
            queue = queues.get(info.id)
            view: dict[str, Any] = {"id": info.id, "groups": info.groups, "healthy": info.healthy}
            if info.reason is not None:
                view["reason"] = info.reason
            view["busy"] = queue is not None and queue.queued + queue.in_flight > 0
            view["you"] = info.id == self.agent
            agents.append(view)
        return {"agents": agents}

    async def search_messages(self, a: SearchMessages) -> dict[str, Any]:
        # Only this agent's messages: those it received and those it sent (two queries, merged best first).
        received, sent = await asyncio.gather(
            self.client.history(agent=self.agent, search=a.query, limit=a.limit),
            self.client.history(sender=self.agent, search=a.query, limit=a.limit),
        )
        seen: set[int] = set()
        found = []
        for m in interleave(received.messages, sent.messages):
            if m.id not in seen:
                seen.add(m.id)
                found.append(message_view(m))
        return {"messages": found[: a.limit]}

    async def message_status(self, a: MessageStatus) -> dict[str, Any]:
        reply = await self.client.get(a.id)
        m = reply.message
        if self.agent not in (m.to, m.sender):
            raise CoordError("not_recipient", f"message {a.id} is neither to nor from {self.agent}", a.id)
        view = message_view(m)
        view["attempts"] = m.attempts
        if m.error is not None:
            view["error"] = m.error
        return view

    async def call(self, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        """Run tool ``name``; a bad argument or a daemon error is a tool error naming its code."""
        tool = self.tools.get(name)
        try:
            if tool is None:
                raise CoordError("bad_request", f"no tool named {name!r}: use one of {', '.join(self.tools)}")
            cls, run = tool
            try:
                args = msgspec.convert(arguments or {}, cls)
            except msgspec.ValidationError as e:
                raise CoordError("bad_request", f"{name}: {e}") from None
            result = await run(args)
        except CoordError as e:
            return tool_error(e.code, e.describe())
        text = msgspec.json.encode(result).decode()
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=result)


def interleave(a: list[protocol.MessageInfo], b: list[protocol.MessageInfo]) -> list[protocol.MessageInfo]:
    """Two ranked lists as one, taking from each in turn, so that neither's best matches are pushed out."""
    out = []
    for i in range(max(len(a), len(b))):
        out += a[i : i + 1] + b[i : i + 1]
    return out


def tool_error(code: str, message: str) -> types.CallToolResult:
    text = f"error [{code}]: {message}"
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content={"error": {"code": code, "message": message}},
        is_error=True,
    )


def tool_list(tools: dict[str, type[Args]]) -> list[types.Tool]:
    """The tools as MCP describes them: name, description (the Args docstring) and input schema."""
    _, components = msgspec.json.schema_components(list(tools.values()))
    listed = []
    for name, cls in tools.items():
        schema = dict(components[cls.__name__])
        schema.pop("title", None)
        description = " ".join((schema.pop("description", None) or "").split())
        schema.setdefault("properties", {})
        hints = types.ToolAnnotations(read_only_hint=cls.read_only, open_world_hint=False)
        listed.append(types.Tool(name=name, description=description, input_schema=schema, annotations=hints))
    return listed


def make_server(tools: AgentTools) -> Server[Any]:
    listed = types.ListToolsResult(tools=tool_list({name: cls for name, (cls, _) in tools.tools.items()}))

    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        return listed

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        return await tools.call(params.name, params.arguments)

    instructions = (
        f"You are agent {tools.agent} of a team of coding agents; coordd carries messages between them. "
        "fetch_inbox reads what others sent you; acknowledge what you have acted on; reply answers a message; "
        "send_message and broadcast write to others."
    )
    return Server(
        "coordd", version=__version__, instructions=instructions, on_list_tools=list_tools, on_call_tool=call_tool
    )


def serve(agent: str, socket_path: str | None) -> None:
    """Serve MCP on stdin/stdout as ``agent`` until the client closes stdin."""

    async def main() -> None:
        async with AsyncClient(socket_path, timeout=IO_TIMEOUT) as client:
            server = make_server(AgentTools(agent, client))
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())

    anyio.run(main)
