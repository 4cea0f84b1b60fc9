"""coordctl: the thin client of coordd, as a library and as a CLI.

``Client`` is blocking and imports no asyncio; ``AsyncClient`` is loaded only
when first asked for, so that scripts and the CLI do not pay for asyncio.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

# msgspec imports typing_extensions whenever it is installed (the mcp extra brings it) for type forms coordctl
# never uses: a sixth of the CLI's import time. Hidden while msgspec loads, it uses typing's own instead.
if "msgspec" not in sys.modules and "typing_extensions" not in sys.modules:
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # importing it raises ImportError
    try:
        import msgspec  # noqa: F401
    finally:
        del sys.modules["typing_extensions"]

from coordctl.client import Client, CoordError, DaemonUnavailable
from coordctl.protocol import DEFAULT_MAX_FRAME, ERROR_CODES, PROTOCOL_VERSION

if TYPE_CHECKING:
    from coordctl.aclient import AsyncClient

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_MAX_FRAME",
    "ERROR_CODES",
    "PROTOCOL_VERSION",
    "AsyncClient",
    "Client",
    "CoordError",
    "DaemonUnavailable",
    "__version__",
]


def __getattr__(name: str) -> object:
    if name == "AsyncClient":
        from coordctl.aclient import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
