"""What a request means: a broadcast skips its own sender, an idempotency key names one message
(key_conflict), and a mistyped agent id gets a "did you mean"."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from coordctl import CoordError
from coordctl import protocol as p

AGENTS = [{"id": "Agent-1", "groups": ["devs"]}, {"id": "Agent-2", "groups": ["devs"]}, {"id": "Agent-3"}]


def ctl(d, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COORDD_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "coordctl", "--socket", d.socket, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def recipients(c, ids: list[int]) -> list[str]:
    return [c.get(i).message.to for i in ids]


def test_a_broadcast_skips_its_sender_unless_told(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        assert recipients(c, c.broadcast("standup", sender="Agent-1")) == ["Agent-2", "Agent-3"]
        assert recipients(c, c.broadcast("devs only", group="devs", sender="Agent-2")) == ["Agent-1"]
        everyone = c.broadcast("me too", sender="Agent-1", include_sender=True)
        assert recipients(c, everyone) == ["Agent-1", "Agent-2", "Agent-3"]
        assert len(c.broadcast("from outside", sender="lead")) == 3  # not an agent: nothing to skip
        assert len(c.broadcast("no sender")) == 3
        # The wire as a 0.1.0 client writes it (no include_sender): it skips the sender too.
        old = c.call(p.Broadcast(body="from an old client", sender="Agent-3"))
        assert isinstance(old, p.Ids) and recipients(c, old.ids) == ["Agent-1", "Agent-2"]
    cli = ctl(d, "broadcast", "from the CLI", "--sender", "Agent-3")
    assert cli.returncode == 0 and len(cli.stdout.split()) == 2
    cli = ctl(d, "broadcast", "from the CLI", "--sender", "Agent-3", "--include-sender")
    assert cli.returncode == 0 and len(cli.stdout.split()) == 3


def test_a_broadcast_to_its_sender_alone_sends_nothing(make_daemon):
    d = make_daemon(agents=[{"id": "Solo", "groups": ["one"]}, {"id": "Other"}])
    with d.client() as c:
        assert c.broadcast("nobody else", group="one", sender="Solo") == []
        assert c.status().rows == 0
        assert len(c.broadcast("myself", group="one", sender="Solo", include_sender=True)) == 1


def refused(call) -> CoordError:
    with pytest.raises(CoordError) as e:
        call()
    return e.value


def test_reusing_a_key_for_another_message_is_a_key_conflict(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        first = c.send("Agent-1", "deploy 1.2", key="deploy")
        assert c.send("Agent-1", "deploy 1.2", key="deploy") == first  # a retry: the first id
        assert c.send("Agent-1", "deploy 1.2", key="deploy", sender="ci", tags=["x"]) == first  # labels may differ
        other_body = refused(lambda: c.send("Agent-1", "deploy 1.3", key="deploy"))
        assert other_body.code == "key_conflict"
        assert f"message {first}" in other_body.message and "body" in other_body.message
        other_agent = refused(lambda: c.send("Agent-2", "deploy 1.2", key="deploy"))
        assert other_agent.code == "key_conflict" and "recipient" in other_agent.message
        # While the first is still being committed (the same request), too; nothing of the batch is stored.
        twice = refused(
            lambda: c.batch([{"to": "Agent-3", "body": "a", "key": "b"}, {"to": "Agent-3", "body": "b", "key": "b"}])
        )
        assert twice.code == "key_conflict" and "messages[1]." in twice.message
        # A group send compares the group, not the member its pick chose.
        grouped = c.send("@devs", "review please", key="review")
        assert c.send("@devs", "review please", key="review") == grouped
        assert refused(lambda: c.send("Agent-1", "review please", key="review")).code == "key_conflict"
        # A broadcast's copies: the same broadcast again is idempotent, another body is a conflict.
        copies = c.broadcast("standup", key="standup")
        assert c.broadcast("standup", key="standup") == copies
        assert refused(lambda: c.broadcast("standup moved", key="standup")).code == "key_conflict"
        assert c.status().rows == 1 + 1 + 3
    cli = ctl(d, "send", "Agent-1", "deploy 1.4", "--key", "deploy")
    assert cli.returncode == 1 and cli.stderr.startswith("error [key_conflict]: ")


def test_a_mistyped_agent_gets_a_did_you_mean(make_daemon):
    d = make_daemon(agents=AGENTS)
    with d.client() as c:
        typo = refused(lambda: c.send("agent-2", "hi"))
        assert typo.code == "unknown_agent" and "did you mean 'Agent-2'?" in typo.message
        assert "configured agents: Agent-1, Agent-2, Agent-3" in typo.message
        far = refused(lambda: c.send("reviewer", "hi"))
        assert far.code == "unknown_agent" and "did you mean" not in far.message
        assert "did you mean 'Agent-3'?" in refused(lambda: c.history(agent="Agnet-3")).message
        assert "did you mean 'Agent-1'?" in refused(lambda: c.inbox("Agent_1")).message
        assert c.ping().version  # and it goes on serving
