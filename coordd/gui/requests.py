"""The GUI-only requests: `onboard` (run an agent's onboarding sequence) and `pointer` (where the mouse is).

Both run on the one GUI thread, between deliveries, never during one. Loaded on
first use, so a daemon without gui agents never imports any of the GUI code.
"""

from __future__ import annotations

from coordctl import protocol as p
from coordd.delivery import Delivery
from coordd.gui.transport import GuiTransport, pointer
from coordd.model import DeliveryError, Refused, TransportDown


async def handle_gui(req: p.Onboard | p.Pointer, delivery: Delivery) -> p.Reply:
    try:
        if isinstance(req, p.Pointer):
            x, y, width, height = await pointer()
            return p.PointerAt(x=x, y=y, screen_width=width, screen_height=height)
        return p.Onboarded(agent=req.agent, steps=await _transport(delivery, req.agent).onboard(req.message))
    except TransportDown as e:
        raise Refused("transport_down", f"{e.reason}; nothing was done") from None
    except DeliveryError as e:
        raise Refused("not_delivered", e.reason) from None


def _transport(delivery: Delivery, agent: str) -> GuiTransport:
    q = delivery.queues.get(agent)
    if q is None:
        names = ", ".join(delivery.queues)  # the configured agents, in config order
        raise Refused("unknown_agent", f"agent: no agent named {agent!r}; configured agents: {names}")
    if not isinstance(q.transport, GuiTransport):
        raise Refused(
            "bad_request", f"agent {agent} uses the {q.transport_name()} transport; onboarding needs a gui agent"
        )
    return q.transport
