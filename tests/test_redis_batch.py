"""Auto-pipelining on a real redis-server: every caller gets its own reply, even when a batch
mixes failures, and a restarted Redis costs at most one failed batch."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from engine.local import RedisServer
from engine.store.redis_batch import CommandBatcher


async def test_replies_go_to_their_own_callers(redis_url: str) -> None:
    pool = aioredis.ConnectionPool.from_url(redis_url)
    batcher = CommandBatcher(pool, deadline=5.0)
    try:
        await asyncio.gather(*(batcher.call("SET", f"batch:{i}", f"v{i}") for i in range(300)))
        values = await asyncio.gather(*(batcher.call("GET", f"batch:{i}") for i in range(300)))
        assert values == [f"v{i}".encode() for i in range(300)]
    finally:
        await batcher.aclose()
        await pool.aclose()


async def test_an_error_reply_fails_its_command_alone(redis_url: str) -> None:
    pool = aioredis.ConnectionPool.from_url(redis_url)
    batcher = CommandBatcher(pool, deadline=5.0)
    try:
        await batcher.call("SET", "batch:text", "not a number")
        outcomes = await asyncio.gather(
            batcher.call("SET", "batch:a", "1"),
            batcher.call("INCR", "batch:text"),  # an error reply in the middle of the batch
            batcher.call("INCR", "batch:a"),
            return_exceptions=True,
        )
        assert outcomes[0] == b"OK"
        assert isinstance(outcomes[1], ResponseError)
        assert outcomes[2] == 2
        # The connection is still in step: the next reply is the next command's.
        assert await batcher.call("GET", "batch:a") == b"2"
    finally:
        await batcher.aclose()
        await pool.aclose()


async def test_a_restarted_redis_costs_at_most_one_failed_batch() -> None:
    with RedisServer() as server:
        pool = aioredis.ConnectionPool.from_url(server.url)
        batcher = CommandBatcher(pool, deadline=5.0)
        try:
            # Batches that overlap in flight hold several pooled connections at once, all of
            # which the restart will kill.
            assert set(await _pings_over_turns(batcher, turns=8)) == {b"PONG"}
            await asyncio.to_thread(server.restart)
            with pytest.raises(RedisConnectionError):
                await batcher.call("PING")
            assert set(await _pings_over_turns(batcher, turns=8)) == {b"PONG"}
        finally:
            await batcher.aclose()
            await pool.aclose()


async def _pings_over_turns(batcher: CommandBatcher, turns: int) -> list[object]:
    """Five PINGs queued in each of `turns` event-loop turns: one batch per turn."""

    async def ping_after(turn: int) -> object:
        for _ in range(turn):
            await asyncio.sleep(0)  # a yield to the loop, not a wait
        return await batcher.call("PING")

    return await asyncio.gather(*(ping_after(turn) for turn in range(turns) for _ in range(5)))
