"""The cluster-wide directory of agents: a JetStream key-value bucket, key = agent id, value = its node and health.

Each heartbeat a node reads the whole bucket (the last value of each key), then claims its own agents: a key
nobody holds it creates (atomically: of two nodes that claim it at once, one wins), one it holds it refreshes.
A key held by another node that is live (heard from within LIVE_BEATS heartbeats) is that node's: this node
refuses its own agent of that name, says so in status, and forwards that agent's messages to the holder. The
bucket's TTL drops the keys of a node that stopped; the other nodes keep what they last saw (so a send to an
agent of a node that is down is still accepted, and waits in JetStream for it), shown not live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from coordctl import protocol as p
from coordd.cluster.link import Link
from coordd.config import Cluster
from coordd.schema import FORGET_CLUSTER_AGENT, SAVE_CLUSTER_AGENT, Write
from coordd.store import Store

log = logging.getLogger("coordd.cluster")

LIVE_BEATS = 3  # a node not heard from for this many heartbeats is not live; the bucket's TTL is twice that


class Entry(msgspec.Struct):
    node: str
    health: str | None = None  # None: healthy, else why not
    updated: float = 0.0  # the node's clock at its last heartbeat
    groups: list[str] = []  # the groups it joins there: `broadcast --group` and "@GROUP" reach it from every node


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Entry).decode


def _shown(remote: dict[str, Entry]) -> dict[str, tuple]:
    """What the served config shows of the agents served elsewhere: node, groups, health (not `updated`)."""
    return {agent: (e.node, tuple(e.groups), e.health) for agent, e in remote.items()}


class Directory:
    def __init__(
        self,
        config: Cluster,
        link: Link,
        store: Store,
        local: Callable[[], dict[str, list[str]]],
        health: Callable[[str], str | None],
        changed: Callable[[dict[str, Entry], dict[str, str]], None],
    ) -> None:
        self.config = config
        self.me = config.node
        self.link = link
        self.store = store  # keeps what was seen, for a start while NATS is away
        self.local = local  # this node's configured agents -> their groups
        self.health = health  # an agent's health here: None, or why it is down
        self.changed = changed  # changed(remote agent -> its entry, refused agent -> node), when either changes
        self.seen: dict[str, Entry] = {}  # every agent of another node ever seen (kept when its key expires)
        self.refused: dict[str, str] = {}  # this node's agents that another live node holds -> that node
        self.held: dict[str, Entry] = {}  # the entries of those, as the holder wrote them
        self.beat = asyncio.Event()  # set to refresh at once (a reload changed the agents)

    def live(self, entry: Entry, now: float) -> bool:
        return now - entry.updated < LIVE_BEATS * self.config.heartbeat_s

    def remote(self) -> dict[str, Entry]:
        """Every agent served elsewhere -> its entry: those of other nodes, and this node's refused ones."""
        return self.seen | self.held

    def nodes(self) -> list[p.NodeSeen]:
        now, by_node = time.time(), dict[str, p.NodeSeen]()
        for e in self.seen.values():
            seen = by_node.setdefault(e.node, p.NodeSeen(node=e.node, agents=0, live=False, updated=e.updated))
            seen.agents += 1
            seen.updated = max(seen.updated or 0.0, e.updated)
            seen.live = seen.live or self.live(e, now)
        return sorted(by_node.values(), key=lambda n: n.node)

    async def run(self) -> None:
        # What the last run saw: sends to those agents are accepted (and queued) even before NATS is reached.
        self.seen = {
            agent: Entry(node=node, updated=updated) for agent, node, updated in self.store.load_cluster_agents()
        }
        if self.seen:
            self.changed(self.remote(), {})
        kv: KeyValue | None = None
        while True:
            await self.link.up.wait()
            try:
                if kv is None:
                    kv = await self._bucket()
                await self._heartbeat(kv)
            except Exception as e:  # NATS went away meanwhile: the next beat after it is back
                log.debug("directory heartbeat: %s", e)
            self.beat.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.beat.wait(), self.config.heartbeat_s)

    async def _bucket(self) -> KeyValue:
        assert self.link.js is not None
        name = f"{self.config.stream}_AGENTS"
        try:
            return await self.link.js.key_value(name)
        except BucketNotFoundError:
            ttl = 2 * LIVE_BEATS * self.config.heartbeat_s
            return await self.link.js.create_key_value(
                KeyValueConfig(bucket=name, history=1, ttl=ttl, replicas=self.config.replicas)
            )

    async def _read(self, kv: KeyValue) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        watcher = await kv.watchall()
        try:
            while (update := await watcher.updates(timeout=5.0)) is not None:  # None: the snapshot is whole
                if update.value:
                    with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                        entries[update.key] = _decode(update.value)
        finally:
            await watcher.stop()
        return entries

    async def _heartbeat(self, kv: KeyValue) -> None:
        entries = await self._read(kv)
        now = time.time()
        local = self.local()
        refused: dict[str, str] = {}
        self.held = {}
        for agent, groups in local.items():
            held = entries.get(agent)
            if held is not None and held.node != self.me and self.live(held, now):
                refused[agent], self.held[agent] = held.node, held
                continue
            value = _encode(Entry(node=self.me, health=self.health(agent), updated=now, groups=groups))
            if held is None:
                try:
                    await kv.create(agent, value)
                except Exception:  # another node created it first: it is theirs, as the next read shows
                    continue
            else:
                await kv.put(agent, value)
        for agent in refused.keys() - self.refused.keys():
            log.error(
                "agent %s is served by node %s: this node refuses its own agent of that name (agent ids are "
                "unique across the cluster); its messages go to node %s",
                agent,
                refused[agent],
                refused[agent],
            )
        before = _shown(self.remote())
        saves, forgets = [], []
        for agent, e in entries.items():
            if e.node != self.me and agent not in local:
                old = self.seen.get(agent)
                if old is None or old.node != e.node:
                    saves.append((agent, e.node, e.updated))
                self.seen[agent] = e
        for agent in local:
            if self.seen.pop(agent, None) is not None:
                forgets.append((agent,))
        if saves or forgets:
            ops: Write = [(SAVE_CLUSTER_AGENT, saves, True), (FORGET_CLUSTER_AGENT, forgets, True)]
            self.store.write(ops, deferred=True)
        self.refused = refused
        after = self.remote()
        if _shown(after) != before:  # not at each heartbeat: only when what the served config shows changes
            self.changed(after, refused)
