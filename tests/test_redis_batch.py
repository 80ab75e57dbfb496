"""Auto-pipelining on a real redis-server: every caller gets its own reply, even when a batch
mixes failures; a restarted Redis costs at most one failed batch; a silent one, a timeout."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.local import RedisServer
from engine.store.redis_batch import CommandBatcher


async def test_replies_go_to_their_own_callers(redis_url: str) -> None:
    batcher = CommandBatcher(redis_url, deadline=5.0)
    try:
        await asyncio.gather(*(batcher.call("SET", f"batch:{i}", f"v{i}") for i in range(300)))
        values = await asyncio.gather(*(batcher.call("GET", f"batch:{i}") for i in range(300)))
        assert values == [f"v{i}".encode() for i in range(300)]
        # Turns whose batches overlap in flight on the one connection stay in step too.
        replies = await asyncio.gather(
            *(
                _after_turns(turn, functools.partial(batcher.call, "GET", f"batch:{i}"))
                for turn in range(8)
                for i in range(30)
            )
        )
        assert replies == [f"v{i}".encode() for _ in range(8) for i in range(30)]
    finally:
        await batcher.aclose()


async def test_the_url_chooses_the_database(redis_url: str) -> None:
    batcher = CommandBatcher(redis_url + "/3", deadline=5.0)
    direct = aioredis.Redis.from_url(redis_url + "/3")
    try:
        await batcher.call("SET", "batch:db", "three")
        assert await direct.get("batch:db") == b"three"
    finally:
        await batcher.aclose()
        await direct.aclose()


async def test_a_redis_that_never_replies_times_out() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        writer.close()

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    batcher = CommandBatcher(f"redis://127.0.0.1:{port}", deadline=0.2)
    try:
        with pytest.raises(RedisTimeoutError):
            await batcher.call("PING")
    finally:
        await batcher.aclose()
        silent.close()
        await silent.wait_closed()


async def test_an_error_reply_fails_its_command_alone(redis_url: str) -> None:
    batcher = CommandBatcher(redis_url, deadline=5.0)
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
        with pytest.raises(NoScriptError):
            await batcher.call("EVALSHA", "0" * 40, 0)
    finally:
        await batcher.aclose()


async def test_a_restarted_redis_costs_at_most_one_failed_batch() -> None:
    with RedisServer() as server:
        batcher = CommandBatcher(server.url, deadline=5.0)
        try:
            assert set(await _pings_over_turns(batcher, turns=8)) == {b"PONG"}
            await asyncio.to_thread(server.restart)
            # The old connection's end may or may not have been seen by now: one command can
            # still meet it, and none after that.
            (first,) = await asyncio.gather(batcher.call("PING"), return_exceptions=True)
            assert first == b"PONG" or isinstance(first, RedisConnectionError)
            assert set(await _pings_over_turns(batcher, turns=8)) == {b"PONG"}
        finally:
            await batcher.aclose()


async def _after_turns(turns: int, command: Callable[[], Awaitable[object]]) -> object:
    """`command` queued `turns` event-loop turns from now (a call queues when it is made)."""
    for _ in range(turns):
        await asyncio.sleep(0)  # a yield to the loop, not a wait
    return await command()


async def _pings_over_turns(batcher: CommandBatcher, turns: int) -> list[object]:
    """Five PINGs queued in each of `turns` event-loop turns: one batch per turn."""
    return await asyncio.gather(
        *(
            _after_turns(turn, functools.partial(batcher.call, "PING"))
            for turn in range(turns)
            for _ in range(5)
        )
    )
