"""Auto-pipelining for Redis: the commands of one event-loop turn go out as one pipeline.

redis-py spends far more per command on its own bookkeeping (taking a pooled connection,
packing, timeouts, parsing, giving it back) than Redis spends running it: about 130 µs against
20 µs per command when 32 commands share a pipeline (measured here, loopback).  Under load an
event-loop turn holds many requests' store operations, so sending them together cuts the
client's cost several-fold without changing what each one means: every command is still
atomic on its own (a pipeline is not a transaction; nothing needs it to be), and each caller
gets its own reply or its own error.

A pipeline that fails on the wire fails every command in it with the same connection error,
exactly as each would have failed alone: the caller cannot know whether a script ran, which is
what client idempotency keys are for.  Nothing is retried here for the same reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

Pending = list[tuple[tuple[Any, ...], "asyncio.Future[Any]"]]


class CommandBatcher:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pending: Pending = []
        self._scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()

    async def call(self, *command: Any) -> Any:
        """Run one command; its reply (or its error) comes back to this caller alone."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((command, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: Pending) -> None:
        pipe = self._client.pipeline(transaction=False)
        for command, _ in batch:
            pipe.execute_command(*command)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def aclose(self) -> None:
        """Let pipelines already sent deliver their replies."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
