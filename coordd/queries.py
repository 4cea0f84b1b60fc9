"""What the read-only requests answer: history, get, status, agents; stored rows merged with what memory knows.

A message being delivered is `queued` in the database and shown as `delivering`
from memory (delivery's in-flight lists), so every answer here merges the two.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from coordctl import protocol as p
from coordd import __version__
from coordd.config import Agent, Config, RemoteAgent
from coordd.delivery import Delivery
from coordd.hooks import NO_HOOKS, Hooks
from coordd.model import Refused
from coordd.store import Store
from coordd.validation import MAX_PAGE, check_page


def status_of(message_id: int, delivery: Delivery, store: Store) -> str:
    """A message's status now: `delivering` from memory, else as stored ("queued" if not stored yet)."""
    if delivery.in_flight(message_id):
        return "delivering"
    found = store.load_record(message_id)
    return found[1] if found else "queued"


class Queries:
    def __init__(
        self,
        config: Config,
        store: Store,
        delivery: Delivery,
        socket_path: str,
        observer: Hooks = NO_HOOKS,
        metrics_url: str | None = None,
        metrics_error: str | None = None,
        http_url: str | None = None,
        http_error: str | None = None,
        cluster: Callable[[], p.ClusterStatus] | None = None,
    ) -> None:
        self.store = store
        self.delivery = delivery
        self.socket_path = socket_path
        self.observer = observer  # latency percentiles and watchers, for `status`
        self.metrics_url = metrics_url  # where the HTTP endpoint listens
        self.metrics_error = metrics_error  # why it does not, though configured
        self.http_url, self.http_error = http_url, http_error  # the same of the dashboard ([http] listen)
        self.cluster = cluster  # [cluster]: the link to NATS and the other nodes, for `status`
        self.started = time.monotonic()
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.agents = {a.id: a for a in config.agents}

    async def history(self, req: p.History) -> p.Page:
        check_page(req, self.agents, self.delivery.orphans)
        delivering = req.status == "delivering"
        if delivering:
            req.status = "queued"
        if req.search is not None:
            await self.store.indexed()  # a search finds every message acknowledged before it
        # Fitted before `delivering` drops some, so that the cursor goes on from the last row the page read.
        page = self._fit(await self.store.history(req, self.config.daemon.max_frame_bytes), req)
        for m in page.messages:
            if m.status == "queued" and self.delivery.in_flight(m.id):
                m.status = "delivering"
        if delivering:
            page.messages = [m for m in page.messages if m.status == "delivering"]
        return page

    def _fit(self, page: p.Page, req: p.History) -> p.Page:
        """As many messages as fit in one frame of daemon.max_frame_bytes (at least one); the cursor goes on
        from there (a search's cursor counts the matches shown)."""
        budget = self.config.daemon.max_frame_bytes - 1024  # the page's own fields
        msgs = page.messages
        if sum(len(m.body) * 4 + 1024 for m in msgs) <= budget:  # surely fits: skip the encoding
            return page
        size = 0
        for n, m in enumerate(msgs):
            size += len(p.encoder.encode(m))
            if size > budget and n:
                page.messages, page.cursor = msgs[:n], msgs[n - 1].id if req.search is None else (req.cursor or 0) + n
                break
        return page

    async def thread(self, req: p.Thread) -> p.Page:
        if not 1 <= req.limit <= MAX_PAGE:
            raise Refused("bad_request", f"limit must be 1 to {MAX_PAGE}, got {req.limit}")
        budget = self.config.daemon.max_frame_bytes - 1024  # the page's own fields
        messages = await self.store.thread(req.message_id, req.limit, budget)
        if messages is None:
            raise Refused("unknown_message", f"no message {req.message_id}: it never existed or retention pruned it")
        for m in messages:
            if m.status == "queued" and self.delivery.in_flight(m.id):
                m.status = "delivering"
        return p.Page(messages=messages)

    async def get(self, message_id: int) -> p.Message:
        found = await self.store.get(message_id)
        if found is None:
            raise Refused("unknown_message", f"no message {message_id}: it never existed or retention pruned it")
        if found.message.status == "queued" and self.delivery.in_flight(message_id):
            found.message.status = "delivering"
        return found

    async def status(self, config_error: str | None) -> p.StatusInfo:
        counts = await self.store.counts()
        now = time.time()
        agents = []
        for a in self.config.agents:
            q = self.delivery.queues[a.id]
            oldest = q.oldest_created()
            unacked = q.oldest_unacked() if q.pull or q.leased else None
            agents.append(
                p.AgentStatus(
                    id=a.id,
                    transport=q.transport_name(),
                    healthy=q.down is None,
                    reason=q.down,
                    down_since=q.down_since,
                    queued=len(q),
                    in_flight=len(q.in_flight),
                    delivered=counts.get((a.id, "delivered"), 0),
                    failed=counts.get((a.id, "failed"), 0),
                    cancelled=counts.get((a.id, "cancelled"), 0),
                    oldest_queued_age=now - oldest if oldest is not None else None,
                    last_error=q.last_error,
                    leased=len(q.leased),
                    oldest_unacked_age=now - unacked if unacked is not None else None,
                    paused=q.paused is not None,
                    paused_since=q.paused[0] if q.paused is not None else None,
                    paused_until=q.paused[1] if q.paused is not None else None,
                    inbox_files=q.transport.files() if q.transport is not None else None,
                )
            )
        for st in agents:
            st.latency_p50, st.latency_p99 = self.observer.percentiles(st.id, now)
        r = self.config.retention
        orphaned = self.delivery.orphaned()
        return p.StatusInfo(
            metrics_url=self.metrics_url,
            metrics_error=self.metrics_error,
            http_url=self.http_url,
            http_error=self.http_error,
            watchers=self.observer.watchers(),
            version=__version__,
            pid=os.getpid(),
            uptime=time.monotonic() - self.started,
            socket=self.socket_path,
            db_path=self.store.path,
            db_bytes=self.store.size_bytes(),
            rows=self.store.rows,
            max_messages=r.max_messages,
            max_age_days=r.max_age_days,
            queued=self.delivery.queued(),
            agents=agents,
            orphaned=sum(orphaned.values()),
            orphaned_agents=sorted(orphaned),
            config_error=config_error,
            queued_bytes=self.delivery.held(),
            max_queued_bytes=self.config.queue.max_bytes,
            cluster=self.cluster() if self.cluster is not None else None,
        )

    def agent_list(self) -> p.AgentList:
        return p.AgentList(agents=[self._agent_info(a) for a in self.config.agents])

    def _agent_info(self, a: Agent) -> p.AgentInfo:
        q = self.delivery.queues[a.id]
        return p.AgentInfo(
            id=a.id,
            transport=q.transport_name(),
            groups=a.groups,
            healthy=q.down is None and not (isinstance(a, RemoteAgent) and a.health),
            reason=q.down or (f"on node {a.node}: {a.health}" if isinstance(a, RemoteAgent) and a.health else None),
            paused=q.paused is not None,
            paused_until=q.paused[1] if q.paused is not None else None,
            **self._node_of(a),
        )

    def _node_of(self, a: Agent) -> dict:
        """In a cluster: the node serving the agent, and for one configured here that another node holds, why."""
        if not isinstance(a, RemoteAgent):
            return {"node": self.config.cluster.node} if self.config.cluster is not None else {}
        refused = f"configured here too, but node {a.node} serves it (agent ids are unique in a cluster)"
        return {"node": a.node, "refused": refused if a.refused else None}
