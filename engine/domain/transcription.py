"""One vended token buys exactly one transcription.

The order of steps is the rule:
1. the URL is validated (400 before anything else happens);
2. a replayed `clientRequestId` returns the stored job (no upstream call, no token use);
3. a token already spent on a job is refused (401 `token_used`);
4. the token's `jti` is *claimed* atomically, so of many concurrent submissions one proceeds
   (the others get 409 `token_in_use`);
5. the upstream call; if it fails or refuses, the claim is released and the paid token can be
   tried again, so no credit is lost to an upstream fault;
6. on success the job is recorded: the token as used, the job's owner, the client key.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import msgspec

from engine.config import Settings
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
from engine.store.protocol import Store
from engine.store.records import StoredResponse
from engine.upstream.client import TTTClient

JOB_OWNER_SCOPE = "job-owner"
USED_TOKEN_SCOPE = "token-used"  # noqa: S105 - a store scope name, not a secret
JOB_RETENTION_SECONDS = 7 * 24 * 3600
_JOB_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class JobReply(msgspec.Struct, frozen=True):
    status_code: int
    body: bytes
    replayed: bool
    rate: RateState | None


def _upstream_id(body: dict[str, Any]) -> str:
    for key in ("id", "jobId", "requestId", "request_id"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def validate_job_id(job_id: str) -> str:
    """Ids are opaque tokens: no slash, dot or percent can make them another upstream path."""
    if not 1 <= len(job_id) <= 128 or not set(job_id) <= _JOB_ID_CHARS:
        raise InvalidRequest(
            "jobId must be 1-128 letters, digits, '-' or '_'",
            code="invalid_job_id",
            details={"jobId": job_id[:200]},
        )
    return job_id


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
        if await self._store.recall(USED_TOKEN_SCOPE, token.jti, now) is not None:
            raise Unauthorized(
                "This vended token was already used for a transcription", code="token_used"
            )
        attempt = uuid.uuid4().hex
        claim = f"jti:{token.jti}"
        hold = self._settings.transcribe_timeout_seconds + 60
        if not await self._store.claim(claim, attempt, hold, now):
            raise Conflict(
                "This vended token is being used by another request; retry shortly",
                code="token_in_use",
                headers={"Retry-After": "1"},
            )
        try:
            reply = await self._client.submit(url, client_key or attempt)
        except EngineError:
            await self._store.release(claim, attempt)
            raise
        body = self._accepted_body(reply.body, url)
        job_id = str(body["jobId"])
        stored = StoredResponse(fingerprint, 202, msgspec.json.encode(body))
        now = self._clock()
        keep = max(self._settings.idempotency_ttl_seconds, JOB_RETENTION_SECONDS)
        await self._store.remember(USED_TOKEN_SCOPE, token.jti, stored, keep, now)
        await self._store.remember(
            JOB_OWNER_SCOPE, job_id, StoredResponse("", 200, token.user_id.encode()), keep, now
        )
        if client_key is not None:
            stored = await self._store.remember(
                scope, client_key, stored, self._settings.idempotency_ttl_seconds, now
            )
        await self._store.release(claim, attempt)
        return JobReply(202, stored.body, False, rate)

    @staticmethod
    def _accepted_body(upstream: dict[str, Any], url: str) -> dict[str, Any]:
        """Upstream fields unchanged; only fields the app needs and upstream omitted are added."""
        job_id = _upstream_id(upstream)
        added = {
            "ok": True,
            "jobId": job_id,
            "url": url,
            "status": "queued",
            "statusUrl": f"/ttt/status/{job_id}",
        }
        return {**added, **upstream}

    async def status(self, caller: UserPrincipal | VendedPrincipal, job_id: str) -> JobReply:
        validate_job_id(job_id)
        now = self._clock()
        rate = await self._limiter.hit(caller.user_id, now)
        owner = await self._store.recall(JOB_OWNER_SCOPE, job_id, now)
        if owner is None or owner.body.decode() != caller.user_id:
            # The same answer for "no such job" and "someone else's job": ids are not an oracle.
            raise NotFound("Job not found", code="job_not_found", details={"jobId": job_id})
        reply = await self._client.status(job_id)
        body = {"jobId": job_id, **reply.body}
        return JobReply(200, msgspec.json.encode(body), False, rate)
