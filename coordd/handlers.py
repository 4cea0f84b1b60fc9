"""What each request does: validation, storage, queueing, and the reply.

`Handlers.handle` is the one entry point; it matches on the request type. A
refusal raises Refused, which the server turns into an Error reply with a stable
code. A send is acknowledged only once its row is committed; only then does it
join its agent's queue.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from coordctl import protocol as p
from coordd import __version__
from coordd import store as s
from coordd.config import Config
from coordd.delivery import Delivery, held_size
from coordd.observer import NO_HOOKS, Hooks
from coordd.store import Record, Store, StorageError, StorageFull

MAX_NAME = 64  # sender, kind, tag
MAX_KEY = 256
MAX_TAGS = 16
MAX_PAGE = 1000
MAX_WAIT_S = 3600.0
MAX_ID = (1 << 63) - 1  # SQLite's largest integer
# Messages of a large batch handled per turn of the event loop (checked, stored, queued), so that the other
# clients are served in between: a turn costs 10-15 ms here. Up to this many, a batch is handled in one
# turn as a send is. A batch stays all or nothing either way (Store.exclusive).
CHUNK = 1000
# Control characters: C0 but tab and newline, DEL, C1. In a terminal they are keystrokes, not text.
BODY_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
NAME_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # senders, kinds, tags: a line of a header, so no newline


class Refused(Exception):
    def __init__(self, code: str, message: str, message_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id


class Handlers:
    def __init__(self, config: Config, store: Store, delivery: Delivery, socket_path: str) -> None:
        self.config = config
        self.store = store
        self.delivery = delivery
        self.socket_path = socket_path
        self.started = time.monotonic()
        self.observer: Hooks = NO_HOOKS  # metrics and watch events; the daemon installs its Observer
        self.configure(config)
        self.reloader: Callable[[], Awaitable[p.Reloaded]] | None = None  # set by the daemon
        self.config_error: str | None = None  # why the last reload failed
        self.accepting = True
        self._unstored: Counter[str] = Counter()  # accepted, commit not yet done, by agent
        self._unstored_bytes = 0  # ...and what their bodies hold (see queue.max_bytes)
        self._unstored_keys: dict[str, tuple[int, asyncio.Future]] = {}

    def configure(self, config: Config) -> None:
        """Serve `config` from now on (at start, and at each reload)."""
        self.config = config
        self.agents = {a.id: a for a in config.agents}
        self.groups: dict[str, list[str]] = {}
        for a in config.agents:
            for g in a.groups:
                self.groups.setdefault(g, []).append(a.id)
        self.observer.configure(config)

    def knows(self, agent: str) -> bool:
        """A configured agent, or one whose queued messages wait for it to be configured again."""
        return agent in self.agents or agent in self.delivery.orphans

    async def handle(self, req: p.Request) -> p.Reply:
        if not self.accepting and not isinstance(req, (p.Ping, p.StatusRequest, p.History, p.Get, p.Agents, p.Metrics)):
            raise Refused("shutting_down", "coordd is shutting down and takes no new work: retry once it is back")
        for field in ("message_id", "cursor"):
            value = getattr(req, field, None)
            if value is not None and not -MAX_ID <= value <= MAX_ID:
                raise Refused("bad_request", f"{field} {value} is out of range: ids are 64-bit integers")
        match req:
            case p.Send():
                return await self.send(req)
            case p.Batch():
                return p.Ids(ids=await self.batch(req))
            case p.Broadcast():
                return p.Ids(ids=await self.broadcast(req))
            case p.History():
                return await self.history(req)
            case p.Get():
                return await self.get(req.message_id)
            case p.Retry():
                return await self.retry(req.message_id)
            case p.Cancel():
                return await self.cancel(req.message_id)
            case p.StatusRequest():
                return await self.status()
            case p.Agents():
                return p.AgentList(agents=[self._agent_info(a) for a in self.config.agents])
            case p.Metrics():
                return p.MetricsText(text=self.observer.exposition())
            case p.Ping():
                return p.Pong(version=__version__, protocol=p.PROTOCOL_VERSION)
            case p.Reload() if self.reloader is not None:
                return await self.reloader()
            case p.Onboard() | p.Pointer():
                from coordd.gui_requests import handle_gui  # loaded on first use: no GUI code otherwise

                return await handle_gui(self, req)
        raise Refused("bad_request", f"unhandled request {type(req).__name__}")  # pragma: no cover

    # --- send, batch, broadcast --------------------------------------------------

    async def send(self, req: p.Send) -> p.Sent:
        msg = p.NewMessage(
            to=req.to, body=req.body, sender=req.sender, priority=req.priority, kind=req.kind, tags=req.tags, key=req.key
        )  # fmt: skip
        if req.wait and req.timeout is not None and not 0 < req.timeout <= MAX_WAIT_S:
            raise Refused("bad_request", f"timeout must be more than 0 and at most {MAX_WAIT_S:g} seconds, got {req.timeout}")
        [message_id], stored = await self._store([msg], where="")
        if req.wait:
            return await self._await_outcome(message_id, req.timeout or self.config.daemon.wait_timeout_s)
        return p.Sent(id=message_id, duplicate=not stored)

    async def broadcast(self, req: p.Broadcast) -> list[int]:
        if req.group is None:
            targets = list(self.agents)
        elif req.group in self.groups:
            targets = self.groups[req.group]
        else:
            groups = ", ".join(sorted(self.groups)) or "none are configured"
            raise Refused("unknown_agent", f"group: no group named {req.group!r}; groups: {groups}")
        msgs = [
            p.NewMessage(
                to=t, body=req.body, sender=req.sender, priority=req.priority, kind=req.kind, tags=req.tags,
                key=f"{req.key}:{t}" if req.key else None,
            )
            for t in targets
        ]  # fmt: skip
        return (await self._store(msgs, where=""))[0]

    async def batch(self, req: p.Batch) -> list[int]:
        return (await self._store(req.messages, where="messages"))[0]

    async def _store(self, msgs: list[p.NewMessage], where: str) -> tuple[list[int], int]:
        """Validate all, then store the new ones in one transaction: (ids in input order, how many were new).

        A message whose idempotency key is already known gets the first message's
        id and stores nothing. Nothing is stored unless every message is valid.
        """
        if not msgs:
            raise Refused("bad_request", f"{where or 'messages'} is empty: give at least one message")
        entries: list[int | Record] = []
        fresh: list[Record] = []
        by_key: dict[str, Record] = {}
        waits: list[asyncio.Future] = []
        per_agent: dict[str, int] = {}  # new messages by agent
        size = 0  # what the fresh bodies will hold
        now = time.time()
        for i, m in enumerate(msgs):
            if i and not i % CHUNK:
                await asyncio.sleep(0)  # a large batch: serve the other clients between chunks
            self._validate(m, f"{where}[{i}]." if where else "")
            if m.key is not None:
                known = by_key.get(m.key) or self._known_key(m.key, waits)
                if known is not None:
                    entries.append(known)
                    continue
            rec = Record(
                id=0, agent=m.to, body=m.body, priority=m.priority, created=now,
                sender=m.sender, kind=m.kind, tags=list(m.tags) if m.tags else None, key=m.key,
            )  # fmt: skip
            fresh.append(rec)
            entries.append(rec)
            per_agent[m.to] = per_agent.get(m.to, 0) + 1
            size += held_size(m.body)
            if m.key is not None:
                by_key[m.key] = rec
        self._check_limits(len(fresh), per_agent, size)
        for rec, i in zip(fresh, self.store.allocate_ids(len(fresh))):
            rec.id = i
        if waits:  # a key still being committed by another request: answer once it is stored
            await asyncio.gather(*waits, return_exceptions=True)
        if fresh:
            await self._commit(fresh, size, per_agent, by_key)
        return [e if isinstance(e, int) else e.id for e in entries], len(fresh)

    def _validate(self, m: p.NewMessage, where: str) -> None:
        if m.to not in self.agents:
            names = ", ".join(self.agents)
            raise Refused("unknown_agent", f"{where}to: no agent named {m.to!r}; configured agents: {names}")
        if not m.body.strip():
            raise Refused("bad_request", f"{where}body is empty: give the message some text")
        if self.config.daemon.control_chars == "reject" and (bad := BODY_CONTROL.search(m.body)):
            raise Refused("bad_request", f"{where}body has the control character U+{ord(bad[0]):04X} at offset "
                          f"{bad.start()}, refused by daemon.control_chars = \"reject\": remove it from the text")  # fmt: skip
        for field, value in (("sender", m.sender), ("kind", m.kind), *(("tags", t) for t in m.tags)):
            if value is not None and (bad := NAME_CONTROL.search(value)):
                raise Refused("bad_request", f"{where}{field} has the control character U+{ord(bad[0]):04X}: "
                              "names are one line of plain text")  # fmt: skip
        for field, value, limit in (("sender", m.sender, MAX_NAME), ("kind", m.kind, MAX_NAME), ("key", m.key, MAX_KEY)):
            if value is not None and not 0 < len(value) <= limit:
                raise Refused("bad_request", f"{where}{field} must be 1 to {limit} characters, got {len(value)}")
        if len(m.tags) > MAX_TAGS or any(not 0 < len(t) <= MAX_NAME for t in m.tags):
            raise Refused("bad_request", f"{where}tags: at most {MAX_TAGS} tags of 1 to {MAX_NAME} characters each")

    def _known_key(self, key: str, waits: list[asyncio.Future]) -> int | None:
        unstored = self._unstored_keys.get(key)
        if unstored is not None:
            waits.append(unstored[1])  # reply only once the first one is stored too
            return unstored[0]
        row = self.store.find_key(key)
        return row[0] if row else None

    def _check_limits(self, n: int, per_agent: dict[str, int], size: int) -> None:
        """Refuse what would take a queue past its limits: n new messages, by agent, whose bodies hold size bytes."""
        q = self.config.queue
        total = self.delivery.queued() + sum(self._unstored.values()) + n
        if total > q.max_total:
            raise Refused("queue_full", f"{total} messages would be queued, over queue.max_total = {q.max_total}: "
                          "wait for deliveries to drain or raise the limit")  # fmt: skip
        held = self.delivery.held() + self._unstored_bytes + size
        if held > q.max_bytes:
            raise Refused("queue_full", f"undelivered messages would hold {held:,} bytes, over queue.max_bytes = "
                          f"{q.max_bytes:,}: wait for deliveries to drain, send smaller messages, or raise the limit")  # fmt: skip
        for agent, n in per_agent.items():
            depth = self.delivery.queues[agent].depth() + self._unstored[agent] + n
            if depth > q.max_per_agent:
                raise Refused("queue_full", f"agent {agent} would have {depth} queued, over queue.max_per_agent = "
                              f"{q.max_per_agent}: wait for its deliveries or raise the limit")  # fmt: skip

    async def _commit(self, fresh: list[Record], size: int, per_agent: dict[str, int], by_key: dict[str, Record]) -> None:
        """Store fresh, their room in the queues reserved meanwhile; then queue them."""
        large = len(fresh) > CHUNK
        fut = asyncio.get_running_loop().create_future() if large else self.store.insert(fresh)
        self._unstored_bytes += size
        for agent, n in per_agent.items():
            self._unstored[agent] += n
        for key, rec in by_key.items():
            self._unstored_keys[key] = (rec.id, fut)
        try:
            if large:
                await self._commit_large(fresh)
            else:
                await fut
        except StorageFull as e:
            raise Refused("storage_full", f"the disk holding {self.store.path} is full, nothing was stored ({e}): "
                          "free some space there and retry; coordd goes on by itself") from None  # fmt: skip
        except StorageError as e:
            raise Refused("storage_error", f"the database refused the write, nothing was stored ({e}); "
                          f"check the disk holding {self.store.path} and retry") from None  # fmt: skip
        finally:
            if large:
                fut.set_result(None)  # requests waiting for one of its keys go on, whether it was stored or not
            self._unstored_bytes -= size
            for agent, n in per_agent.items():
                self._unstored[agent] -= n
            for key in by_key:
                self._unstored_keys.pop(key, None)
        if not large:
            self._queue(fresh)

    async def _commit_large(self, fresh: list[Record]) -> None:
        """Store and queue a large batch a chunk per turn of the loop, as the only writer meanwhile: a write
        that comes in between waits, so it is queued after this batch as its ids say (and committed after:
        the batch stays all or nothing). Until all are queued their room stays reserved twice, which may
        refuse a send meanwhile but never lets a queue past its limit."""
        async with self.store.exclusive():
            await self.store.insert_chunked(fresh, CHUNK)
            for i in range(0, len(fresh), CHUNK):
                if i:
                    await asyncio.sleep(0)
                self._queue(fresh[i : i + CHUNK])

    def _queue(self, recs: list[Record]) -> None:
        self.observer.accepted(recs)
        for rec in recs:
            self.delivery.enqueue(rec)

    async def _await_outcome(self, message_id: int, timeout: float) -> p.Sent:
        status = self._status_of(message_id)
        error = None
        if status not in p.TERMINAL_STATUSES:
            try:
                status, error = await asyncio.wait_for(self.delivery.wait_for(message_id), timeout)
            except TimeoutError:
                raise Refused("not_delivered", f"message {message_id} was not delivered within {timeout:g} s; "
                              "it stays queued (see `coordctl show`)", message_id) from None  # fmt: skip
        if status != "delivered":
            raise Refused("not_delivered", f"message {message_id} is {status}: {error or 'see coordctl show'}", message_id)
        return p.Sent(id=message_id, status="delivered")

    def _status_of(self, message_id: int) -> str:
        if self.delivery.in_flight(message_id):
            return "delivering"
        found = self.store.load_record(message_id)
        return found[1] if found else "queued"

    # --- queries -------------------------------------------------------------------

    async def history(self, req: p.History) -> p.Page:
        if not 1 <= req.limit <= MAX_PAGE:
            raise Refused("bad_request", f"limit must be 1 to {MAX_PAGE}, got {req.limit}")
        if req.agent is not None and req.agent not in self.agents and req.agent not in self.delivery.orphans:
            raise Refused("unknown_agent", f"agent: no agent named {req.agent!r}; configured agents: {', '.join(self.agents)}")
        delivering = req.status == "delivering"
        if delivering:
            req.status = "queued"
        page = await self.store.history(req, self.config.daemon.max_frame_bytes)
        for m in page.messages:
            if m.status == "queued" and self.delivery.in_flight(m.id):
                m.status = "delivering"
        if delivering:
            page.messages = [m for m in page.messages if m.status == "delivering"]
        return self._fit(page)

    def _fit(self, page: p.Page) -> p.Page:
        """As many messages as fit in one frame of daemon.max_frame_bytes (at least one); the cursor goes on from there."""
        budget = self.config.daemon.max_frame_bytes - 1024  # the page's own fields
        msgs = page.messages
        if sum(len(m.body) * 4 + 1024 for m in msgs) <= budget:  # surely fits: skip the encoding
            return page
        size = 0
        for n, m in enumerate(msgs):
            size += len(p.encoder.encode(m))
            if size > budget and n:
                page.messages, page.cursor = msgs[:n], msgs[n - 1].id
                break
        return page

    async def get(self, message_id: int) -> p.Message:
        found = await self.store.get(message_id)
        if found is None:
            raise Refused("unknown_message", f"no message {message_id}: it never existed or retention pruned it")
        if found.message.status == "queued" and self.delivery.in_flight(message_id):
            found.message.status = "delivering"
        return found

    async def status(self) -> p.StatusInfo:
        counts = await self.store.counts()
        now = time.time()
        agents = []
        for a in self.config.agents:
            q = self.delivery.queues[a.id]
            oldest = q.oldest_created()
            agents.append(p.AgentStatus(
                id=a.id, transport=q.transport.name,
                healthy=q.down is None, reason=q.down, queued=len(q), in_flight=len(q.in_flight),
                delivered=counts.get((a.id, "delivered"), 0), failed=counts.get((a.id, "failed"), 0),
                cancelled=counts.get((a.id, "cancelled"), 0),
                oldest_queued_age=now - oldest if oldest is not None else None, last_error=q.last_error,
            ))  # fmt: skip
        for st in agents:
            st.latency_p50, st.latency_p99 = self.observer.percentiles(st.id, now)
        r = self.config.retention
        orphaned = self.delivery.orphaned()
        return p.StatusInfo(
            metrics_url=self.observer.metrics_url, metrics_error=self.observer.metrics_error,
            watchers=self.observer.watchers(),
            version=__version__, pid=os.getpid(), uptime=time.monotonic() - self.started, socket=self.socket_path,
            db_path=self.store.path, db_bytes=self.store.size_bytes(), rows=self.store.rows,
            max_messages=r.max_messages, max_age_days=r.max_age_days, queued=self.delivery.queued(), agents=agents,
            orphaned=sum(orphaned.values()), orphaned_agents=sorted(orphaned), config_error=self.config_error,
            queued_bytes=self.delivery.held(), max_queued_bytes=self.config.queue.max_bytes,
        )  # fmt: skip

    def _agent_info(self, a) -> p.AgentInfo:
        q = self.delivery.queues[a.id]
        return p.AgentInfo(id=a.id, transport=q.transport.name, groups=a.groups, healthy=q.down is None, reason=q.down)

    # --- retry and cancel -----------------------------------------------------------

    async def retry(self, message_id: int) -> p.Sent:
        found = self.store.load_record(message_id)
        if found is None:
            raise Refused("unknown_message", f"no message {message_id}: it never existed or retention pruned it")
        rec, status = found
        if status != "failed":
            raise Refused("bad_state", f"message {message_id} is {self._status_of(message_id)}; only failed messages can be retried")
        if rec.agent not in self.agents:
            raise Refused("unknown_agent", f"message {message_id} is for {rec.agent!r}, which is no longer configured")
        await self._write(message_id, [(s.MARK_REQUEUED, (message_id,), False)])
        rec.error = None
        self.observer.retried(rec.agent, rec, None, None)
        self.delivery.enqueue(rec)
        return p.Sent(id=message_id, status="queued")

    async def cancel(self, message_id: int) -> p.Sent:
        found = self.store.load_record(message_id)
        if found is None:
            raise Refused("unknown_message", f"no message {message_id}: it never existed or retention pruned it")
        rec, status = found
        q = self.delivery.queue_of(rec.agent)  # an orphaned queue too: a re-added agent must not get it
        queued = q.remove(message_id) if q is not None else None
        orphan = rec.agent not in self.agents and status == "queued" and not self.delivery.in_flight(message_id)
        if queued is None and not orphan:
            now = self._status_of(message_id)
            raise Refused("bad_state", f"message {message_id} is {now}; only queued messages can be cancelled")
        try:
            await self._write(message_id, [(s.MARK_CANCELLED, (message_id,), False)])
        except Refused:
            if queued is not None:
                q.put_back([queued])
            raise
        if queued is not None:
            q.release([queued])
        self.delivery.settle(message_id, "cancelled")
        self.observer.cancelled(rec)
        return p.Sent(id=message_id, status="cancelled")

    async def _write(self, message_id: int, ops: s.Write) -> None:
        try:
            await self.store.write(ops)
        except StorageFull as e:
            raise Refused("storage_full", f"the disk holding {self.store.path} is full ({e}); nothing changed: "
                          "free some space there and retry", message_id) from None  # fmt: skip
        except StorageError as e:
            raise Refused("storage_error", f"the database refused the write ({e}); nothing changed", message_id) from None
