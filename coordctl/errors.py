"""The exceptions of both clients, and how an ``error`` reply becomes one."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import NoReturn

    from coordctl import protocol


class CoordError(Exception):
    """The daemon refused a request (or, client side, could not be used).

    ``code`` is one of ``protocol.ERROR_CODES``, or ``"protocol_error"`` when
    the daemon's reply made no sense to the client.
    """

    def __init__(self, code: str, message: str, message_id: int | None = None) -> None:
        super().__init__(code, message, message_id)
        self.code = code
        self.message = message
        self.message_id = message_id

    def __str__(self) -> str:
        return f"[{self.code}] {self.describe()}"

    def describe(self) -> str:
        """The message, naming the message id if the daemon's text does not already."""
        if self.message_id is None or f"message {self.message_id}" in self.message:
            return self.message
        return f"{self.message} (message {self.message_id})"


class DaemonUnavailable(CoordError):
    """The daemon could not be reached, or the connection to it broke."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)
        self.args = (message,)  # so that pickling round-trips through __init__


def error_for(reply: protocol.Error) -> CoordError:
    if reply.code == "unavailable":  # the daemon is at max_connections: as good as unreachable
        return DaemonUnavailable(reply.message)
    return CoordError(reply.code, reply.message, reply.message_id)


def raise_for(reply: protocol.Error) -> NoReturn:
    raise error_for(reply)
