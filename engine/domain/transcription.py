"""One vended token buys exactly one transcription, and the job it bought is kept.

Submitting, in this order:
1. the URL is validated (400 before anything else happens);
2. a replayed `clientRequestId` returns the stored job (no upstream call, no token use);
3. the token is *consumed*: one store operation moves it from unused to in flight and creates
   the job (`submitting`), or refuses (401 `token_used` / `token_refunded`, 409
   `token_in_use`).  The consumption is the claim: there is no separate "is it used?" step
   for a concurrent submission to slip past;
4. upstream is asked, naming the job by the engine's own id (its webhook echoes it); on any
   error the token goes back to unused, once, so no credit is lost to an upstream fault;
5. the job is recorded as accepted (upstream id, token used) before the client hears of it.

Polling answers from the store once a job is terminal; see `jobs.py` for the bodies.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any

import msgspec

from engine.config import Settings
from engine.domain import jobs
from engine.domain.credits import Clock
from engine.domain.ratelimit import RateLimiter, RateState
from engine.domain.tokens import UserPrincipal, VendedPrincipal
from engine.domain.urls import normalise_tiktok_url
from engine.errors import (
    Conflict,
    EngineError,
    IdempotencyKeyReused,
    InvalidRequest,
    NotFound,
    Unauthorized,
)
from engine.store.protocol import Store, StoreUnavailable
from engine.store.records import (
    ConsumeOrder,
    JobObservation,
    JobRecord,
    StoredResponse,
    vend_request_id,
)
from engine.upstream.client import TTTClient

log = logging.getLogger("engine.jobs")
JOB_RETENTION_SECONDS = 7 * 24 * 3600
# Where engines before the job records kept a used token and a job's owner (for 7 days): read
# so that an upgrade neither lets such a token buy a second job nor loses such a job.
LEGACY_USED_TOKEN_SCOPE = "token-used"  # noqa: S105 - a store scope name, not a secret
LEGACY_JOB_OWNER_SCOPE = "job-owner"
# Recording an accepted job is retried this many times inline (with these pauses), then in
# the background for as long as `_BACKGROUND_RECORD_SECONDS`: the user paid for that job.
_RECORD_PAUSES = (0.05, 0.2, 0.5)
_BACKGROUND_RECORD_SECONDS = 600.0
_JOB_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class JobReply(msgspec.Struct, frozen=True):
    status_code: int
    body: bytes
    replayed: bool
    rate: RateState | None


def new_job_id() -> str:
    return "job_" + os.urandom(16).hex()


def validate_job_id(job_id: str) -> str:
    """Ids are opaque tokens: no slash, dot or percent can make them another upstream path."""
    if not 1 <= len(job_id) <= 128 or not set(job_id) <= _JOB_ID_CHARS:
        raise InvalidRequest(
            "jobId must be 1-128 letters, digits, '-' or '_'",
            code="invalid_job_id",
            details={"jobId": job_id[:200]},
        )
    return job_id


def _refusal(status: str) -> EngineError:
    if status == "token_in_use":
        return Conflict(
            "This vended token is being used by another request; retry shortly",
            code="token_in_use",
            headers={"Retry-After": "1"},
        )
    if status == "token_refunded":
        return Unauthorized(
            "This vended token's credit was refunded; vend a new token", code="token_refunded"
        )
    return Unauthorized("This vended token was already used for a transcription", code="token_used")


class TranscriptionService:
    def __init__(
        self,
        store: Store,
        client: TTTClient,
        limiter: RateLimiter,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self._store = store
        self._client = client
        self._limiter = limiter
        self._settings = settings
        self._clock = clock
        self._recording: set[asyncio.Task[None]] = set()

    async def submit(
        self, token: VendedPrincipal, raw_url: str, client_key: str | None
    ) -> JobReply:
        url = normalise_tiktok_url(raw_url)
        now = self._clock()
        rate = await self._limiter.hit(token.user_id, now)
        scope = f"user:{token.user_id}|transcribe"
        fingerprint = hashlib.sha256(url.encode()).hexdigest()
        if client_key is not None:
            stored = await self._store.recall(scope, client_key, now)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    raise IdempotencyKeyReused()
                return JobReply(stored.status_code, stored.body, True, rate)
        if await self._store.recall(LEGACY_USED_TOKEN_SCOPE, token.jti, now) is not None:
            raise _refusal("token_used")
        job_id = new_job_id()
        consumed = await self._store.consume_token(
            ConsumeOrder(
                job_id=job_id,
                user_id=token.user_id,
                jti=token.jti,
                vend_request_id=vend_request_id(token.jti),
                body=jobs.submitting_body(job_id, url),
                hold_until=now + self._settings.transcribe_timeout_seconds + 60,
                expires_at=now + JOB_RETENTION_SECONDS,
                now=now,
            )
        )
        if consumed != "consumed":
            raise _refusal(consumed)
        try:
            reply = await self._client.submit(url, job_id)
        except Exception:
            # Upstream refused or failed (any EngineError): the token was not spent.  A
            # cancelled call is not released: upstream may have the job, so the token stays in
            # flight until its hold runs out.
            await self._release(token.user_id, job_id)
            raise
        upstream_id = jobs.upstream_id(reply.body)
        accepted = jobs.accepted_body(reply.body, job_id, url)
        record = await self._record_accepted(token.user_id, job_id, upstream_id, accepted)
        body = jobs.render(record) if record is not None else jobs.render_new(accepted, now)
        stored = StoredResponse(fingerprint, 202, body)
        if client_key is not None:
            try:
                stored = await self._store.remember(
                    scope, client_key, stored, self._settings.idempotency_ttl_seconds, now
                )
            except StoreUnavailable:
                # The job is recorded; only a replay of this key would not find it.
                log.error("job_replay_record_failed", extra={"jobId": job_id})
        return JobReply(202, stored.body, False, rate)

    async def _release(self, user_id: str, job_id: str) -> None:
        try:
            await self._store.release_token(user_id, job_id)
        except StoreUnavailable:
            # The token stays in flight until its hold runs out, then is usable again.
            log.error("token_release_failed", extra={"jobId": job_id, "userId": user_id})

    async def _record_accepted(
        self, user_id: str, job_id: str, upstream_id: str, body: bytes
    ) -> JobRecord | None:
        """Upstream runs the job now: record it, retrying a store failure.  If the store stays
        down, the job is logged (`job_record_failed`, an audited event with everything needed
        to recover it) and recording goes on in the background; the client still gets its
        job id, whose polls answer its submitted state until the record lands."""
        for pause in (*_RECORD_PAUSES, None):
            try:
                return await self._store.accept_job(
                    user_id, job_id, upstream_id, body, self._clock()
                )
            except StoreUnavailable:
                if pause is None:
                    break
                await asyncio.sleep(pause)
        log.error(
            "job_record_failed",
            extra={"jobId": job_id, "userId": user_id, "upstreamJobId": upstream_id},
        )
        task = asyncio.get_running_loop().create_task(
            self._record_later(user_id, job_id, upstream_id, body)
        )
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        return None

    async def _record_later(self, user_id: str, job_id: str, upstream_id: str, body: bytes) -> None:
        deadline = self._clock() + _BACKGROUND_RECORD_SECONDS
        pause = 1.0
        while self._clock() < deadline:
            await asyncio.sleep(pause)
            try:
                await self._store.accept_job(user_id, job_id, upstream_id, body, self._clock())
            except StoreUnavailable:
                pause = min(pause * 2, 30.0)
                continue
            log.warning("job_record_recovered", extra={"jobId": job_id, "userId": user_id})
            return
        log.error("job_record_abandoned", extra={"jobId": job_id, "upstreamJobId": upstream_id})

    async def status(self, caller: UserPrincipal | VendedPrincipal, job_id: str) -> JobReply:
        """`/ttt/status` and `/ttt/poll`: the caller's own job, from the store once it is
        terminal, else as upstream says (and recorded when it changed)."""
        validate_job_id(job_id)
        now = self._clock()
        rate = await self._limiter.hit(caller.user_id, now)
        record = await self._store.job(caller.user_id, job_id)
        if record is None:
            return JobReply(
                200, await self._legacy_status(caller.user_id, job_id, now), False, rate
            )
        if record.state not in jobs.TERMINAL and record.upstream_id:
            record = await self._poll_upstream(record) or record
        return JobReply(200, jobs.render(record), False, rate)

    async def _legacy_status(self, user_id: str, job_id: str, now: float) -> bytes:
        """A job an earlier engine submitted (its id is upstream's): proxied as it was then."""
        owner = await self._store.recall(LEGACY_JOB_OWNER_SCOPE, job_id, now)
        if owner is None or owner.body.decode() != user_id:
            # The same answer for "no such job" and "someone else's job": ids are not an oracle.
            raise NotFound("Job not found", code="job_not_found", details={"jobId": job_id})
        reply = await self._client.status(job_id)
        return jobs.status_body(reply.body, job_id)[0]

    async def _poll_upstream(self, record: JobRecord) -> JobRecord | None:
        try:
            reply = await self._client.status(record.upstream_id)
        except NotFound:
            return await self.observe(record, lost=True)
        return await self.observe(record, upstream=reply.body)

    async def observe(
        self, record: JobRecord, *, upstream: dict[str, Any] | None = None, lost: bool = False
    ) -> JobRecord | None:
        """Record an upstream status body (or that upstream lost the job) when it tells the
        store something new; a failure reached here is refunded by the same store step."""
        if lost:
            body, status, change = jobs.lost_body(record.job_id), "failed", "failed|0"
        else:
            assert upstream is not None
            body, status, change = jobs.status_body(upstream, record.job_id)
        if not lost and not record.lost_since and change == record.change:
            return record
        return await self._store.observe_job(
            JobObservation(
                user_id=record.user_id,
                job_id=record.job_id,
                status=status,
                body=body,
                change=change,
                now=self._clock(),
                upstream_id=jobs.upstream_id(upstream) if upstream else "",
                lost=lost,
                grace_seconds=self._settings.job_lost_grace_seconds,
                refund=self._settings.refund_failed_jobs,
                vend_request_id=record.vend_request_id,
            )
        )
