"""Sending to a group: a message to "@NAME" goes to ONE member of group NAME, the one the group's `pick` chooses.

The members are the agents whose `groups` name it, in config order; `[groups.NAME] pick` says how:

- "round-robin" (the default): each member in turn;
- "least-loaded": the member with the fewest messages not yet acknowledged (queued, in flight, or delivered
  and not acked: Delivery.unacked, kept in memory, plus those accepted and not yet committed);
- "idle": a member whose transport reports it idle (Transport.idle), else the least loaded.

A member whose transport is down (its queue's `down` is set) or that is paused (`coordctl pause`) is never
picked while another member is up; when none is up the pick is made among all of them as usual, and the
message waits in that member's queue. Ties go to the
member after the last one picked, so equal members take turns.

The chosen member is the message's recipient; the group is kept on it (Record.group, "@NAME"). A pick reads
counters only: no query, no list built (about 1 us a round-robin pick, 3 us least-loaded or idle, three
members, on the 2-core VM the benchmarks run on).
"""

from __future__ import annotations

from coordd.admission import Admission
from coordd.config import Config, Group
from coordd.delivery import Delivery


class Groups:
    def __init__(self, config: Config, delivery: Delivery, admission: Admission) -> None:
        self.delivery = delivery
        self.admission = admission
        self.turn: dict[str, int] = {}  # by group: the member to look at first next time (kept across reloads)
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.members: dict[str, list[str]] = {}
        for a in config.agents:
            for g in a.groups:
                self.members.setdefault(g, []).append(a.id)
        default = Group()  # a group without a [groups.NAME] table
        self.picks = {name: config.groups.get(name, default).pick for name in self.members}

    def pick(self, group: str, pending: dict[str, int]) -> str:
        """The member of `group` (a configured group) that gets the next message. `pending`: the messages of the
        request being accepted so far, by agent, which no counter holds yet."""
        members = self.members[group]
        start = self.turn.get(group, 0)
        # All down: pick among all the same, and the message waits in that member's queue.
        i = self._choose(members, start, self.picks[group], pending, skip_down=True)
        if i < 0:
            i = self._choose(members, start, self.picks[group], pending, skip_down=False)
        self.turn[group] = i + 1
        return members[i]

    def _choose(self, members: list[str], start: int, how: str, pending: dict[str, int], skip_down: bool) -> int:
        """The index of the member to pick, looking from the one after the last picked on (so that equals take
        turns); -1 if every member is down (or paused) and skip_down."""
        queues = self.delivery.queues
        n = len(members)
        chosen, best = -1, (2, 0)  # best: (0 if idle else 1, load) of the chosen one; any member beats (2, 0)
        for k in range(n):
            i = (start + k) % n
            agent = members[i]
            if skip_down and (queues[agent].down is not None or queues[agent].paused is not None):
                continue
            if how == "round-robin":
                return i
            load = self._load(agent, pending)
            rank = (0 if how == "idle" and self._idle(agent, load, pending) else 1, load)
            if rank < best:
                chosen, best = i, rank
        return chosen

    def _load(self, agent: str, pending: dict[str, int]) -> int:
        return self.delivery.unacked.get(agent, 0) + self.admission.unstored(agent) + pending.get(agent, 0)

    def _idle(self, agent: str, load: int, pending: dict[str, int]) -> bool:
        q = self.delivery.queues[agent]
        if q.transport is None:
            return False
        waiting = q.depth() + self.admission.unstored(agent) + pending.get(agent, 0)
        return q.transport.idle(waiting, load) is True
