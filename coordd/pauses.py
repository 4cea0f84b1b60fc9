"""pause and resume: hold an agent's deliveries while its human works in it, and let them go again.

A pause is stored (the `paused` table, schema 7) before memory changes (Delivery.pause), so that an
acknowledged pause survives a restart, and a refused write changes nothing. A pause with a duration
ends by itself: Delivery's timer resumes the agent and removes the row; a row whose end passed while
coordd was down is dropped at start (`restore`).
"""

from __future__ import annotations

import math
import time

from coordctl import protocol as p
from coordd import schema as s
from coordd.config import Config
from coordd.delivery import Delivery
from coordd.model import Refused
from coordd.retry_cancel import write_or_refuse
from coordd.store import Store
from coordd.validation import check_agent

MAX_PAUSE_S = 366 * 86400.0  # a year: longer is a typo (use no duration: until resumed)


class Pauses:
    def __init__(self, config: Config, store: Store, delivery: Delivery) -> None:
        self.store = store
        self.delivery = delivery
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.agents = {a.id for a in config.agents}

    def restore(self) -> None:
        """At start: the pauses stored by earlier runs hold again; those that ended meanwhile are dropped."""
        now = time.time()
        ended = []
        for agent, since, until in self.store.load_paused():
            if until is not None and until <= now:
                ended.append((agent, until))
            else:
                self.delivery.pause(agent, since, until)
        if ended:
            self.store.write([(s.PAUSE_ENDED, ended, True)], deferred=True)

    async def pause(self, req: p.Pause) -> p.PauseState:
        check_agent(req.agent, self.agents, ())  # only a configured agent
        if req.duration is not None and not (0 < req.duration <= MAX_PAUSE_S and math.isfinite(req.duration)):
            raise Refused(
                "bad_request",
                f"duration must be more than 0 and at most {MAX_PAUSE_S:g} seconds, got {req.duration} "
                "(leave it out to pause until resumed)",
            )
        since = time.time()
        until = None if req.duration is None else since + req.duration
        await write_or_refuse(self.store, [(s.PAUSE, (req.agent, since, until), False)])
        self.delivery.pause(req.agent, since, until)
        return self.state(req.agent)

    async def resume(self, req: p.Resume) -> p.PauseState:
        check_agent(req.agent, self.agents, self.delivery.orphans)
        q = self.delivery.queue_of(req.agent)
        if q is not None and q.paused is not None:
            await write_or_refuse(self.store, [(s.UNPAUSE, (req.agent,), False)])
            self.delivery.resume(req.agent)
        return self.state(req.agent)

    def state(self, agent: str) -> p.PauseState:
        q = self.delivery.queue_of(agent)
        if q is None or q.paused is None:
            return p.PauseState(agent=agent, paused=False, queued=len(q) if q is not None else 0)
        since, until = q.paused
        return p.PauseState(agent=agent, paused=True, since=since, until=until, queued=len(q))
