"""Long work in slices, one per turn of the event loop, so that the loop serves every client in between.

coordd is one thread: a 70,000-message batch, a long queue or a large prune would otherwise hold the
loop until it is done. Each slice ends by giving the loop one pass (`next_turn`), which is a yield, never
a wait: nothing is waited for, and the work goes on as soon as the other ready callbacks have run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def next_turn() -> None:
    """Let the loop run every other ready callback once (reads of other sockets, their replies)."""
    await asyncio.sleep(0)  # noqa: sleep-ok: the one yield to the loop; sleep(0) waits for nothing


async def in_turns(items: list[T], size: int) -> AsyncIterator[tuple[int, list[T]]]:
    """(start, items[start:start + size]) for each slice, a turn of the loop between two slices."""
    for start in range(0, len(items), size):
        if start:
            await next_turn()
        yield start, items[start : start + size]
