"""The simulator's webhook sender, as the latest TTTranscribe sends it (upstream reference §8).

One POST per job at its terminal state, only for jobs submitted with a `requestId`; one
attempt, no retry; a 2xx or a 409 counts as delivered, anything else (a network error too) is
kept in `failed`.  The signature is the recipe of §8.3: HMAC-SHA256 (lowercase hex) of the
compact JSON of exactly `jobId, requestId, status, usage, timestamp, idempotencyKey`, in that
order, non-ASCII unescaped; `error`, `cacheHit` and `signature` are not signed.  The
idempotency key is SHA-256 of `<jobId>-<status>-<timestamp>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from engine.timeutil import iso

WEBHOOK_TIMEOUT_SECONDS = 10.0
MODEL_USED = "openai-whisper-base"


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def webhook_payload(
    *,
    job_id: str,
    request_id: str,
    status: str,
    usage: dict[str, Any],
    secret: str,
    error: str | None = None,
    cache_hit: bool | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The body, keys in the upstream's order, with its idempotency key and signature."""
    timestamp = iso(time.time() if now is None else now)
    key = hashlib.sha256(f"{job_id}-{status}-{timestamp}".encode()).hexdigest()
    signed = {
        "jobId": job_id,
        "requestId": request_id,
        "status": status,
        "usage": usage,
        "timestamp": timestamp,
        "idempotencyKey": key,
    }
    signature = hmac.new(secret.encode(), _compact(signed).encode(), hashlib.sha256).hexdigest()
    body: dict[str, Any] = {"jobId": job_id, "requestId": request_id, "status": status}
    body["usage"] = usage
    if error is not None:
        body["error"] = error
    body["timestamp"] = timestamp
    if cache_hit is not None:
        body["cacheHit"] = cache_hit
    body["idempotencyKey"] = key
    body["signature"] = signature
    return body


def usage_of(duration: float, characters: int, processing_seconds: int) -> dict[str, Any]:
    return {
        "audioDurationSeconds": round(duration, 2),
        "transcriptCharacters": characters,
        "modelUsed": MODEL_USED,
        "processingTimeSeconds": processing_seconds,
    }


@dataclass
class WebhookSender:
    """Where webhooks go (`--webhook-url` or `POST /__webhook`) and with which key."""

    secret: str
    url: str = ""

    async def send(self, payload: dict[str, Any]) -> str:
        """One attempt: '' when delivered (a 2xx or a 409), else what went wrong."""
        headers = {
            "Content-Type": "application/json",
            "X-TTTranscribe-Signature": payload["signature"],
            "X-Idempotency-Key": payload["idempotencyKey"],
            "User-Agent": "node-fetch/1.0 (pluct-engine simulator)",
        }
        try:
            async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS) as client:
                response = await client.post(
                    self.url, content=_compact(payload).encode(), headers=headers
                )
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if response.is_success or response.status_code == 409:
            return ""
        return f"HTTP {response.status_code}"
