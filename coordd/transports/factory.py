"""Which transport serves an agent: the one its config's `transport` key names."""

from __future__ import annotations

from coordd import config as c
from coordd.transports import Transport


def make_transport(agent: c.Agent, config: c.Config) -> Transport:
    """The transport for one configured agent (config: the whole Config, for the sections transports of one
    kind share, such as [gui])."""
    # Imported on demand: pyautogui needs a DISPLAY, so it loads only when a gui agent exists.
    if isinstance(agent, c.InboxAgent):
        from coordd.transports.inbox import InboxTransport

        return InboxTransport(agent, config.retention)
    if isinstance(agent, c.GuiAgent):
        from coordd.gui.transport import GuiTransport

        return GuiTransport(agent, config.gui)
    if isinstance(agent, c.TmuxAgent):
        from coordd.transports.tmux import TmuxTransport

        return TmuxTransport(agent)
    if isinstance(agent, c.DiscardAgent):
        from coordd.transports.discard import DiscardTransport

        return DiscardTransport(agent)
    if isinstance(agent, c.PullAgent):
        from coordd.transports.pull import PullTransport

        return PullTransport(agent)
    raise ValueError(f"no transport for {agent!r}")
