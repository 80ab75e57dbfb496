"""The interleaving that let one vended token buy two jobs, forced instead of waited for.

Submission B is held right after its first store operation while submission A runs to the
end.  When "is the token used?" and "claim it" were separate steps, B resumed with a stale
"unused" and claimed a token A had already spent (issue 17).  When consumption is one atomic
store operation there is no step for B to be held between.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from engine.domain.ratelimit import RateLimiter
from engine.domain.tokens import TokenAuthority
from engine.domain.transcription import (
    LEGACY_JOB_OWNER_SCOPE,
    LEGACY_USED_TOKEN_SCOPE,
    TranscriptionService,
)
from engine.errors import EngineError
from engine.store import Store, store_from_url
from engine.store.records import StoredResponse
from engine.upstream.breaker import CircuitBreaker
from engine.upstream.client import TTTClient
from engine.upstream.sim_server import BackgroundSimulator
from tests.conftest import make_settings

VIDEO = "https://www.tiktok.com/@racer/video/7300000000000000043"
_held = contextvars.ContextVar("held", default=False)


class HoldAfterFirstCall:
    """A store whose calls from a task marked `held` stop after the first, until `go` is set."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.go = asyncio.Event()
        self.paused = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await target(*args, **kwargs)
            if _held.get():
                _held.set(False)
                self.paused.set()
                await self.go.wait()
            return result

        return call


def _upstream(jobs: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        jobs.append(request.url.path)
        return httpx.Response(202, json={"id": f"up-{len(jobs)}", "status": "queued"})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_submission_held_between_steps_cannot_spend_a_spent_token(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        str(request.getfixturevalue("redis_url"))
        if backend == "redis"
        else f"sqlite:///{tmp_path / 's.db'}"
    )
    settings = make_settings(url, rate_limit_per_minute=0)
    store = store_from_url(url)
    await store.open()
    held = HoldAfterFirstCall(store)
    jobs: list[str] = []
    client = TTTClient(
        "http://upstream.test",
        settings.ttt_secret,
        CircuitBreaker("t", failure_threshold=5, cooldown_seconds=30),
        transcribe_timeout=5,
        status_timeout=5,
        http=httpx.AsyncClient(transport=_upstream(jobs)),
    )
    service = TranscriptionService(
        held,  # type: ignore[arg-type]
        client,
        RateLimiter(store, 0),
        settings,
        time.time,
    )
    tokens = TokenAuthority(settings)
    minted = tokens.mint_vended("racer", time.time())
    principal = tokens.verify_vended(minted.token)

    async def submission(hold: bool) -> object:
        _held.set(hold)
        try:
            return await service.submit(principal, VIDEO, None)
        except EngineError as error:
            return error.error_code

    async def after(event: asyncio.Event, work: Callable[[], Awaitable[object]]) -> object:
        await event.wait()
        try:
            return await work()
        finally:
            held.go.set()

    try:
        late = asyncio.create_task(submission(hold=True))
        first = await after(held.paused, lambda: submission(hold=False))
        second = await late
    finally:
        await client.aclose()
        await store.close()
    outcomes = sorted(str(getattr(o, "status_code", o)) for o in (first, second))
    assert len(jobs) == 1, f"one token bought {len(jobs)} upstream jobs: {outcomes}"
    assert outcomes in (["202", "token_used"], ["202", "token_in_use"]), outcomes


async def test_records_of_the_engine_before_jobs_still_hold(
    tmp_path: Path, fresh_simulator: BackgroundSimulator
) -> None:
    """A token an earlier engine spent stays spent; a job it submitted stays pollable."""
    settings = make_settings(f"sqlite:///{tmp_path / 's.db'}", fresh_simulator.url)
    store = store_from_url(settings.store_url)
    await store.open()
    client = TTTClient(
        settings.ttt_base,
        settings.ttt_secret,
        CircuitBreaker("t", failure_threshold=5, cooldown_seconds=30),
        transcribe_timeout=5,
        status_timeout=5,
    )
    service = TranscriptionService(store, client, RateLimiter(store, 0), settings, time.time)
    tokens = TokenAuthority(settings)
    principal = tokens.verify_vended(tokens.mint_vended("old", time.time()).token)
    now = time.time()
    try:
        old_job = (await client.submit(VIDEO, "legacy")).body["id"]
        kept = StoredResponse("", 202, b"{}")
        await store.remember(LEGACY_USED_TOKEN_SCOPE, principal.jti, kept, 3600, now)
        await store.remember(
            LEGACY_JOB_OWNER_SCOPE, old_job, StoredResponse("", 200, b"old"), 3600, now
        )
        with pytest.raises(EngineError) as refused:
            await service.submit(principal, VIDEO, None)
        polled = await service.status(principal, old_job)
        with pytest.raises(EngineError) as other:
            await service.status(
                tokens.verify_vended(tokens.mint_vended("eve", now).token), old_job
            )
    finally:
        await client.aclose()
        await store.close()
    assert refused.value.error_code == "token_used"
    assert msgspec.json.decode(polled.body)["jobId"] == old_job
    assert other.value.error_code == "job_not_found"
    assert fresh_simulator.app.stats.jobs_created == 1
