"""The GUI-only requests: `onboard` (run an agent's onboarding sequence) and `pointer` (where the mouse is).

Both run on the one GUI thread, between deliveries, never during one. Loaded on
first use, so a daemon without gui agents never imports any of the GUI code.
"""

from __future__ import annotations

from coordctl import protocol as p
from coordd.handlers import Handlers, Refused
from coordd.transports import DeliveryError, TransportDown
from coordd.transports.gui import GuiTransport, pointer


async def handle_gui(h: Handlers, req: p.Onboard | p.Pointer) -> p.Reply:
    try:
        if isinstance(req, p.Pointer):
            x, y, width, height = await pointer()
            return p.PointerAt(x=x, y=y, screen_width=width, screen_height=height)
        return p.Onboarded(agent=req.agent, steps=await _transport(h, req.agent).onboard(req.message))
    except TransportDown as e:
        raise Refused("transport_down", f"{e.reason}; nothing was done") from None
    except DeliveryError as e:
        raise Refused("not_delivered", e.reason) from None


def _transport(h: Handlers, agent: str) -> GuiTransport:
    q = h.delivery.queues.get(agent)
    if q is None:
        raise Refused("unknown_agent", f"agent: no agent named {agent!r}; configured agents: {', '.join(h.agents)}")
    if not isinstance(q.transport, GuiTransport):
        raise Refused("bad_request", f"agent {agent} uses the {q.transport.name} transport; onboarding needs a gui agent")
    return q.transport
