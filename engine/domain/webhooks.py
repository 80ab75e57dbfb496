"""TTTranscribe's webhook (upstream-tttranscribe.md §8): verified, taken once per delivery, and
applied to the job the engine named in its `requestId`.

The signature is an HMAC-SHA256 over a compact JSON text of exactly six keys in a fixed order
(not over the raw body), so the text is rebuilt from the parsed body; the idempotency key is
recomputed too.  Both are compared in constant time.  A completed webhook carries no
transcript, so the result is fetched from upstream once, then kept like a polled one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from typing import Any

from engine.config import Settings
from engine.domain.credits import Clock
from engine.domain.transcription import JOB_RETENTION_SECONDS, TranscriptionService
from engine.errors import WEBHOOK_AUTH, Conflict, EngineError, NotFound, Unauthorized
from engine.store.protocol import Store
from engine.store.records import JobRecord, StoredResponse
from engine.upstream.client import TTTClient

log = logging.getLogger("engine.jobs")
WEBHOOK_MAX_BYTES = 64 * 1024
WEBHOOK_SCOPE = "webhook-tttranscribe"
RECEIVED = b'{"received":true}'
_SIGNED = ("jobId", "requestId", "status", "usage", "timestamp", "idempotencyKey")
_USAGE = ("audioDurationSeconds", "transcriptCharacters", "modelUsed", "processingTimeSeconds")


def signed_text(payload: dict[str, Any]) -> bytes:
    """The §8.3 text: the six signed keys in order, `usage`'s keys in theirs, compact JSON,
    non-ASCII unescaped, parsed integers kept integers."""
    usage = payload.get("usage")
    if isinstance(usage, dict):
        usage = {
            **{key: usage[key] for key in _USAGE if key in usage},
            **{key: value for key, value in usage.items() if key not in _USAGE},
        }
    signed = {key: usage if key == "usage" else payload.get(key) for key in _SIGNED}
    return json.dumps(signed, separators=(",", ":"), ensure_ascii=False).encode()


def idempotency_key(job_id: str, status: str, timestamp: str) -> str:
    return hashlib.sha256(f"{job_id}-{status}-{timestamp}".encode()).hexdigest()


def _invalid() -> Unauthorized:
    return Unauthorized(
        "The webhook signature does not verify", code="invalid_signature", guidance=WEBHOOK_AUTH
    )


class WebhookService:
    def __init__(
        self,
        store: Store,
        transcription: TranscriptionService,
        client: TTTClient,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self._store = store
        self._transcription = transcription
        self._client = client
        self._secret = (settings.webhook_secret or settings.ttt_secret).encode()
        self._clock = clock

    def verify(self, raw: bytes, signature: str | None) -> dict[str, Any]:
        """The parsed payload if it is signed with our secret; else 401 `invalid_signature`."""
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError):
            raise _invalid() from None
        if not isinstance(payload, dict) or not signature:
            raise _invalid()
        texts = [payload.get(k) for k in ("jobId", "requestId", "status", "timestamp")]
        key = payload.get("idempotencyKey")
        if not all(isinstance(t, str) for t in texts) or not isinstance(key, str):
            raise _invalid()
        expected = hmac.new(self._secret, signed_text(payload), hashlib.sha256).hexdigest()
        in_body = payload.get("signature", signature)
        recomputed = idempotency_key(
            str(payload["jobId"]), str(payload["status"]), str(payload["timestamp"])
        )
        if not (
            hmac.compare_digest(expected, signature.strip().lower())
            and isinstance(in_body, str)
            and hmac.compare_digest(expected, in_body.lower())
            and hmac.compare_digest(recomputed, key)
        ):
            raise _invalid()
        return payload

    async def receive(self, raw: bytes, signature: str | None) -> bytes:
        payload = self.verify(raw, signature)
        key, now = str(payload["idempotencyKey"]), self._clock()
        if await self._store.recall(WEBHOOK_SCOPE, key, now) is not None:
            raise _already_processed()
        record = await self._job(str(payload["requestId"]), str(payload["jobId"]))
        await self._apply(record, payload)
        nonce = os.urandom(16).hex()
        stored = await self._store.remember(
            WEBHOOK_SCOPE, key, StoredResponse(nonce, 200, RECEIVED), JOB_RETENTION_SECONDS, now
        )
        if stored.fingerprint != nonce:  # a concurrent delivery of the same key got there first
            raise _already_processed()
        return RECEIVED

    async def _job(self, request_id: str, upstream_id: str) -> JobRecord:
        owner = await self._store.job_owner(request_id)
        record = await self._store.job(owner, request_id) if owner else None
        if record is None or record.upstream_id not in ("", upstream_id):
            raise NotFound(
                "No job with that requestId",
                code="request_not_found",
                details={"requestId": request_id[:200]},
            )
        return record

    async def _apply(self, record: JobRecord, payload: dict[str, Any]) -> None:
        upstream_id = str(payload["jobId"])
        if payload["status"] == "failed":
            error = payload.get("error")
            failed = {
                "id": upstream_id,
                "status": "failed",
                "progress": 0,
                "error": error if isinstance(error, str) and error else "upstream_failed",
            }
            await self._transcription.observe(record, upstream=failed)
            return
        try:
            reply = await self._client.status(upstream_id)
        except EngineError as exc:
            # Received all the same: the next poll fetches the result.
            log.warning(
                "webhook_result_fetch_failed",
                extra={"jobId": record.job_id, "error": exc.error_code},
            )
            return
        await self._transcription.observe(record, upstream=reply.body)


def _already_processed() -> Conflict:
    return Conflict("This webhook delivery was already processed", code="already_processed")
