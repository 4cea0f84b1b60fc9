"""`coordctl mcp`, driven by the MCP SDK's own stdio client against a real daemon: the tools an agent sees, each
tool end to end between two agents, and daemon errors as tool errors with their code."""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import tomllib

from conftest import Daemon
from mcp import ClientSession, StdioServerParameters, stdio_client

TOOLS = {
    "send_message",
    "reply",
    "broadcast",
    "fetch_inbox",
    "acknowledge",
    "list_agents",
    "search_messages",
    "message_status",
}


@contextlib.asynccontextmanager
async def agent_session(d: Daemon, agent: str):
    """An MCP session with `coordctl mcp --agent AGENT`, started as a subprocess by the SDK's stdio client."""
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "coordctl", "--socket", d.socket, "mcp", "--agent", agent]
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def ok(session: ClientSession, tool: str, **args) -> dict:
    result = await session.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.content[0].type == "text"
    return result.structured_content


async def error_code(session: ClientSession, tool: str, **args) -> str:
    result = await session.call_tool(tool, args)
    assert result.is_error, result
    code = result.structured_content["error"]["code"]
    assert result.content[0].text.startswith(f"error [{code}]: ")
    return code


async def test_tools_are_listed_with_schemas(daemon: Daemon):
    async with agent_session(daemon, "Agent-1") as a:
        tools = {t.name: t for t in (await a.list_tools()).tools}
    assert set(tools) == TOOLS
    for t in tools.values():
        assert t.description and len(t.description) > 40, t.name  # written for a model: says what and when
        assert t.input_schema["type"] == "object" and t.input_schema["additionalProperties"] is False
    send = tools["send_message"].input_schema
    assert send["required"] == ["to", "body"]
    assert send["properties"]["priority"]["enum"] == ["regular", "urgent"]
    assert all(p.get("description") for p in send["properties"].values())
    inbox = tools["fetch_inbox"].input_schema["properties"]
    assert (inbox["unread_only"]["default"], inbox["limit"]["default"], inbox["wait_s"]["default"]) == (True, 20, 0)
    assert tools["acknowledge"].input_schema["required"] == ["ids"]
    assert tools["list_agents"].input_schema["properties"] == {}
    read_only = {name for name, t in tools.items() if t.annotations.read_only_hint}
    assert read_only == {"list_agents", "search_messages", "message_status"}  # fetch_inbox marks messages read


async def test_two_agents_talk_through_the_tools(daemon: Daemon):
    async with agent_session(daemon, "Agent-1") as a, agent_session(daemon, "Agent-2") as b:
        sent = (await ok(a, "send_message", to="Agent-2", body="Review PR 7 please", subject="PR 7"))["id"]
        got = (await ok(b, "fetch_inbox", wait_s=10))["messages"]
        assert [(m["id"], m["from"], m["subject"], m["body"]) for m in got] == [
            (sent, "Agent-1", "PR 7", "Review PR 7 please")
        ]
        assert (await ok(b, "fetch_inbox"))["messages"] == []  # fetched: read now
        status = await ok(a, "message_status", id=sent)
        assert status["status"] == "delivered" and "read_at" in status and "acked_at" not in status
        assert (await ok(b, "acknowledge", ids=[sent]))["acknowledged"] == 1
        assert "acked_at" in await ok(a, "message_status", id=sent)

        answer = (await ok(b, "reply", message_id=sent, body="Looks good"))["id"]
        back = (await ok(a, "fetch_inbox", wait_s=10))["messages"]
        assert [(m["id"], m["from"], m["reply_to"], m["thread"], m["subject"]) for m in back] == [
            (answer, "Agent-2", sent, sent, "PR 7")
        ]
        assert len((await ok(b, "fetch_inbox", unread_only=False, limit=5))["messages"]) == 1

        ids = (await ok(b, "broadcast", body="Stand-up in 5 minutes"))["ids"]
        assert len(ids) == 3  # every agent but its sender, Agent-2
        agents = (await ok(a, "list_agents"))["agents"]
        assert [x["id"] for x in agents] == ["Agent-1", "Agent-2", "Agent-3", "Agent-4"]
        assert all(x["healthy"] and isinstance(x["busy"], bool) for x in agents)
        assert [x["you"] for x in agents] == [True, False, False, False]


async def test_search_sees_only_the_agents_own_messages(daemon: Daemon):
    with daemon.client() as c:
        mine = c.send("Agent-1", "the flamingo deploy is blocked", sender="Agent-3")
        c.send("Agent-1", "lunch at noon?", sender="Agent-3")  # Agent-1's, but no match
        c.send("Agent-4", "flamingo deploy notes", sender="Agent-3")  # a match, but not Agent-1's: never shown
    async with agent_session(daemon, "Agent-1") as a:
        sent = (await ok(a, "send_message", to="Agent-2", body="flamingo: on it"))["id"]
        found = (await ok(a, "search_messages", query="flamingo"))["messages"]
        assert {m["id"] for m in found} == {mine, sent}
        best = (await ok(a, "search_messages", query="flamingo", limit=1))["messages"]
        assert [m["id"] for m in best] in ([mine], [sent])
        assert await error_code(a, "search_messages", query="") == "bad_request"


async def test_errors_are_tool_errors_with_the_code(daemon: Daemon):
    with daemon.client() as c:
        others = c.send("Agent-4", "between 3 and 4", sender="Agent-3")
    async with agent_session(daemon, "Agent-1") as a:
        assert await error_code(a, "send_message", to="Nobody", body="hi") == "unknown_agent"
        assert await error_code(a, "send_message", to="Agent-2", body="   ") == "bad_request"
        assert await error_code(a, "send_message", to="Agent-2") == "bad_request"  # body missing
        assert await error_code(a, "send_message", to="Agent-2", body="x", colour="red") == "bad_request"
        assert await error_code(a, "fetch_inbox", limit=0) == "bad_request"
        assert await error_code(a, "acknowledge", ids=[others]) == "not_recipient"
        assert await error_code(a, "acknowledge", ids=[999999]) == "unknown_message"
        assert await error_code(a, "message_status", id=others) == "not_recipient"  # another agent's message
        assert await error_code(a, "message_status", id=999999) == "unknown_message"
        assert await error_code(a, "reply", message_id=999999, body="x") == "unknown_message"
        assert await error_code(a, "broadcast", body="x", group="nobody-here") == "unknown_group"
        assert await error_code(a, "no_such_tool") == "bad_request"


async def test_one_connection_that_outlives_a_daemon_restart(daemon: Daemon):
    async with agent_session(daemon, "Agent-1") as a:
        await ok(a, "list_agents")
        daemon.stop()
        assert await error_code(a, "list_agents") == "unavailable"
        daemon.start()
        assert len((await ok(a, "list_agents"))["agents"]) == 4  # the server reconnected by itself


def test_print_config_for_each_client():
    def config(client: str, *socket: str) -> str:
        argv = [sys.executable, "-m", "coordctl", *socket, "mcp", "--agent", "Agent-1", "--print-config", client]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stderr.startswith("# "), out.stderr  # where to put it: on stderr
        return out.stdout

    args = ["--socket", "/run/x/coordd.sock", "mcp", "--agent", "Agent-1"]
    claude = shlex.split(config("claude-code", "--socket", "/run/x/coordd.sock"))
    assert claude[:6] == ["claude", "mcp", "add", "--transport", "stdio", "coordd"]
    assert claude[6] == "--" and claude[8:] == args
    codex = tomllib.loads(config("codex", "--socket", "/run/x/coordd.sock"))["mcp_servers"]["coordd"]
    assert codex["args"] == args and codex["command"] == claude[7]
    for client in ("cursor", "gemini"):
        server = json.loads(config(client))["mcpServers"]["coordd"]
        assert server["args"] == ["mcp", "--agent", "Agent-1"] and server["command"] == claude[7]


def test_a_client_of_an_older_protocol_version_is_served(daemon: Daemon):
    """Agents' MCP clients lag the SDK: the 2024-11-05 handshake, by hand, as newline-delimited JSON-RPC."""
    argv = [sys.executable, "-m", "coordctl", "--socket", daemon.socket, "mcp", "--agent", "Agent-1"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as server:

        def rpc(rid: int | None, method: str, params: dict) -> dict | None:
            request = {"jsonrpc": "2.0", "method": method, "params": params} | ({"id": rid} if rid else {})
            server.stdin.write(json.dumps(request) + "\n")
            server.stdin.flush()
            return json.loads(server.stdout.readline()) if rid else None

        hello = {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "old", "version": "1"}}
        assert rpc(1, "initialize", hello)["result"]["protocolVersion"] == "2024-11-05"
        rpc(None, "notifications/initialized", {})
        tools = rpc(2, "tools/list", {})["result"]["tools"]
        assert {t["name"] for t in tools} == TOOLS and all("inputSchema" in t for t in tools)
        call = {"name": "send_message", "arguments": {"to": "Agent-2", "body": "from an older client"}}
        result = rpc(3, "tools/call", call)["result"]
        assert result.get("isError") is not True and result["structuredContent"]["id"] > 0
        server.stdin.close()
        assert server.wait(30) == 0
