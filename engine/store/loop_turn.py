"""What is asked during one event-loop turn, handed over together.

Both stores batch this way: SQLite commits one turn's writes in one transaction
(`GroupCommitter`), Redis sends one turn's commands in one write (`CommandBatcher`).  Each
caller awaits its own future; the flush settles every one of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Batch = list[tuple[T, "asyncio.Future[Any]"]]


class TurnQueue(Generic[T]):
    def __init__(self, flush: Callable[[Batch[T]], None]) -> None:
        """`flush` runs once per turn that had items, as a loop callback; it must settle (or
        hand on) every future of the batch it is given."""
        self._flush = flush
        self._pending: Batch[T] = []
        self._scheduled = False

    def submit(self, item: T) -> asyncio.Future[Any]:
        """Queue `item` now and return the future of its result.

        A plain function, not a coroutine: a caller awaits the future itself, one suspension
        fewer per store call than awaiting a coroutine that awaits it.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._hand_over)
        return future

    def _hand_over(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        self._flush(batch)
