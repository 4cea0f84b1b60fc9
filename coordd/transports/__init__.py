"""How a message reaches an agent. One Transport instance serves one agent.

A transport's `deliver` gets a non-empty list of messages in delivery order and
delivers them in that order. It returns when all are delivered, or raises:

- DeliveryError(reason, delivered=k): the first k were delivered, message k failed
  (it counts as an attempt and is retried with backoff), the rest were not tried;
- TransportDown(reason, delivered=k): the first k were delivered; the rest were not
  tried, nothing counts as an attempt, and they stay queued until the transport is
  probed again (every delivery.unhealthy_recheck_ms, once `health()` reports it healthy).

`max_batch` bounds how many messages one call gets (work in bounded chunks so a
long queue never starves the event loop). `exclusive` names a resource shared by
all transports of one kind (the GUI: one mouse, one clipboard): deliveries that
name the same resource never run at the same time.

Which transport an agent gets: coordd.transports.factory.
"""

from __future__ import annotations

from coordd.model import DeliveryError, Record, TransportDown

__all__ = ["DeliveryError", "Record", "Transport", "TransportDown"]


class Transport:
    name = "?"
    max_batch = 1
    exclusive: str | None = None

    async def start(self) -> None:
        """Open warm connections; called once before the first delivery."""

    async def close(self) -> None:
        """Release what start() opened."""

    def take_over(self, old: Transport) -> None:
        """This transport replaces old for the same agent (a reload changed its config): keep what old
        knows about messages half-delivered, where it still applies."""

    def health(self) -> str | None:
        """None when healthy, else the reason it is not."""
        return None

    async def deliver(self, messages: list[Record]) -> None:
        raise NotImplementedError
