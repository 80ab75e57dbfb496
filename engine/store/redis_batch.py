"""Auto-pipelining for Redis: the commands of one event-loop turn go out in one write.

redis-py spends far more per command on its own bookkeeping (taking a pooled connection,
packing in Python, timeouts, giving it back) than Redis spends running a command: about 130 µs
against 20 µs when 32 commands share a pipeline (measured here, loopback).  Under load an
event-loop turn holds many requests' store operations, so sending them together divides that
cost among them without changing what each one means: every command is still atomic on its
own (this is not a transaction; nothing needs it to be), and each caller gets its own reply or
its own error.  Commands are packed by hiredis (C) and written on one pooled connection; the
replies are read back in order.

A batch that fails on the wire fails every unanswered command in it with the same connection
error, exactly as each would have failed alone: the caller cannot know whether a script ran,
which is what client idempotency keys are for.  Nothing is retried here for the same reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine.store.loop_turn import Batch, TurnQueue

Command = tuple[Any, ...]
Pending = Batch[Command]


class CommandBatcher:
    """`pool` should have no socket timeout: one `deadline` bounds a whole batch instead of a
    timer per reply (redis-py arms one for every read)."""

    def __init__(self, pool: aioredis.ConnectionPool, deadline: float) -> None:
        self._pool = pool
        self._deadline = deadline
        self._turn: TurnQueue[Command] = TurnQueue(self._flush)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def call(self, *command: Any) -> Any:
        """Run one command; its raw reply (or its error) comes back to this caller alone."""
        return await self._turn.submit(command)

    def _flush(self, batch: Pending) -> None:
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: Pending) -> None:
        try:
            connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        except Exception as exc:
            _fail(batch, exc)
            return
        try:
            async with asyncio.timeout(self._deadline):
                await connection.send_packed_command(
                    b"".join(hiredis.pack_command(command) for command, _ in batch)
                )
                for _, future in batch:
                    try:
                        reply = await connection.read_response()
                    except ResponseError as exc:  # an error reply: this command's alone
                        _settle(future, exc)
                    else:
                        _settle(future, reply)
        except Exception as exc:  # the connection failed: the rest cannot be answered
            _fail(batch, exc)
            # Redis went away or restarted: the idle connections in the pool are as dead as
            # this one, and each would fail one more batch before the pool noticed.
            await self._pool.disconnect(inuse_connections=False)
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        finally:
            await self._pool.release(connection)

    async def aclose(self) -> None:
        """Let batches already sent deliver their replies."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():  # its caller went away (a cancelled request)
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _fail(batch: Pending, exc: Exception) -> None:
    for _, future in batch:
        _settle(future, exc)
