"""A TTTranscribe simulator that follows the upstream contract, with faults on request.

Contract (see the upstream reference): `POST /transcribe` → 202 with `id`, `requestId`,
`request_id`, `statusPollUrl`, `status:"queued"`, `submittedAt`, `estimatedProcessingTime`,
`url`; `GET /status/{id}` → progress 15, 35, 75 then 100 (`completed`, with
`result.transcription`) or `failed` with a string `error`; 404 `job_not_found` for unknown ids;
401 without `X-Engine-Auth`; plain-text 404 for unknown routes.  Progress advances one phase
per poll, so tests are deterministic without waiting on a clock.

Like the latest upstream it has a readiness gate: with the fault `{"notReady": true}`,
`GET /ready` answers 503 `{ready:false, reason, missing}` and `POST /transcribe` 503
`service_unavailable` (§9, §6); `/ready` is public like `/health`.  Jobs submitted with a
`requestId` send one signed webhook at their terminal state (§8, `sim_webhooks.py`) when a
target is set (`--webhook-url` or `POST /__webhook {"url": ...}`).  A job whose URL contains
`/@fail` fails at its third poll, or `settle_seconds` (2 s) after submission if no poll came
by then; with a webhook target, other unpolled jobs complete after the same time, so
webhooks fire for clients that never poll.  With `{"cacheHits": true}` a URL that completed
before is answered by a job already completed (`cacheHit: true`, webhook at submission).

Control routes (authenticated like the rest): `POST /__faults` sets faults (camelCase or
snake_case keys), `DELETE /__faults` clears them, `POST /__restart` forgets every job,
`POST /__webhook` sets the webhook target, `GET /__stats` counts what was received (jobs
created, webhooks sent, delivered and failed).

It also serves TikTok-like pages at `/{host}/{path}` for the metadata fetcher in dev mode and
tests (`sim_tiktok.py`).
"""

from __future__ import annotations

import asyncio
import hmac
import random
import re
import time
import uuid
from dataclasses import asdict
from typing import Any

import msgspec

from engine.timeutil import iso
from engine.upstream.sim_state import Faults, Job, Stats
from engine.upstream.sim_tiktok import tiktok_page
from engine.upstream.sim_webhooks import WebhookSender, usage_of, webhook_payload

Scope = dict[str, Any]
_VIDEO = re.compile(r"^https?://(www\.)?tiktok\.com/@[\w.-]+/video/\d+")
_SHORT = re.compile(r"^https?://(vm|vt)\.tiktok\.com/\w+")
_PHASES = (
    ("processing", 15, "audio_extraction"),
    ("processing", 35, "transcription"),
    ("processing", 75, "summarization"),
    ("completed", 100, "completed"),
)
TRANSCRIPT = "this is a simulated transcription of a tiktok video about credits"
_FAILURE = "Transcription error: simulated failure"
_NOT_READY = {"reason": "Missing required secrets", "missing": ["HF_API_KEY"]}


def _cache_key(url: str) -> str:
    """The upstream caches by URL without query and fragment (§3.4)."""
    return url.split("#", 1)[0].split("?", 1)[0]


class Simulator:
    """The ASGI app; one instance holds the jobs, faults and counters."""

    def __init__(
        self, secret: str, seed: int = 0, webhook_url: str = "", settle_seconds: float = 2.0
    ) -> None:
        self.secret = secret
        self.jobs: dict[str, Job] = {}
        self.faults = Faults()
        self.stats = Stats()
        self._random = random.Random(seed)
        self.base_url = ""
        self.webhooks = WebhookSender(secret, webhook_url)
        self.settle_seconds = settle_seconds
        self._cache: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- ASGI plumbing -------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, payload, extra = await self._route(scope["method"], scope["path"], headers, body)
        if status < 0:  # connection reset: promise a body, send half, then drop the socket
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"1000")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"id":', "more_body": True})
            raise ConnectionResetError("simulated reset")
        if isinstance(payload, bytes):
            raw, kind = payload, extra.pop("content-type", "application/json")
        else:
            raw, kind = msgspec.json.encode(payload), "application/json"
        out = [(b"content-type", kind.encode())] + [
            (k.encode(), v.encode()) for k, v in extra.items()
        ]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": raw})

    def _authorised(self, headers: dict[str, str]) -> bool:
        return hmac.compare_digest(headers.get("x-engine-auth", "").encode(), self.secret.encode())

    async def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        self.stats.paths.append(f"{method} {path}")
        if path == "/health" and method == "GET":
            return 200, {"status": "healthy", "service": "tttranscribe", "version": "sim"}, {}
        if path == "/ready" and method == "GET":
            if self.faults.not_ready:
                return 503, {"ready": False, **_NOT_READY}, {}
            return 200, {"ready": True, "checkedAt": int(time.time() * 1000)}, {}
        if path.split("/")[1:2] and path.split("/")[1].endswith("tiktok.com") and method == "GET":
            self.stats.meta_fetches += 1
            return await tiktok_page(path)
        if not self._authorised(headers):
            self.stats.unauthorized += 1
            return (
                401,
                {
                    "error": "unauthorized",
                    "message": "Missing or invalid X-Engine-Auth header",
                    "details": {"provided": "present" if "x-engine-auth" in headers else "missing"},
                },
                {},
            )
        self.stats.last_headers = {k: v for k, v in headers.items() if k != "x-engine-auth"}
        if path == "/__faults":
            return self._set_faults(method, body)
        if path == "/__restart" and method == "POST":
            self.jobs.clear()
            return 200, {"restarted": True}, {}
        if path == "/__webhook" and method == "POST":
            return self._set_webhook(body)
        if path == "/__stats" and method == "GET":
            return 200, asdict(self.stats), {}
        if path == "/transcribe" and method == "POST":
            self.stats.transcribe_calls += 1
            return await self._faulty("transcribe") or self._submit(body)
        if path.startswith("/status/") and method == "GET":
            self.stats.status_calls += 1
            return await self._faulty("status") or self._status(path[len("/status/") :])
        return 404, b"404 Not Found", {"content-type": "text/plain"}

    def _set_faults(self, method: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if method == "DELETE":
            self.faults = Faults()
        elif method == "POST":
            try:
                raw = msgspec.json.decode(body)
                if not isinstance(raw, dict):
                    raise msgspec.ValidationError("expected a JSON object")
                snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): v for k, v in raw.items()}
                self.faults = msgspec.convert(snake, type=Faults)
            except msgspec.MsgspecError as exc:
                return 400, {"error": "invalid_request", "message": str(exc)}, {}
        return 200, asdict(self.faults), {}

    def _set_webhook(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        try:
            raw = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raw = None
        raw = raw if isinstance(raw, dict) else {}
        url, secret = raw.get("url"), raw.get("secret")
        if not isinstance(url, str | None) or not isinstance(secret, str | None):
            return 400, {"error": "invalid_request", "message": "url and secret are strings"}, {}
        self.webhooks.url = url or ""
        if secret:  # the upstream's BUSINESS_ENGINE_WEBHOOK_SECRET; else the shared secret
            self.webhooks.secret = secret
        return 200, {"url": self.webhooks.url}, {}

    async def _faulty(self, route: str) -> tuple[int, Any, dict[str, str]] | None:
        faults = self.faults
        if faults.routes not in ("all", route):
            return None
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.hang:
            await asyncio.sleep(3600)
        if faults.reset:
            return -1, None, {}
        if faults.rate_limited:
            return (
                429,
                {
                    "error": "rate_limited",
                    "message": "Too many requests. Please wait before retrying.",
                    "details": {"retryAfter": 60},
                },
                {},
            )
        if faults.error_rate and self._random.random() < faults.error_rate:
            if faults.html_errors:
                return (
                    faults.error_status,
                    b"<html><body>Bad gateway</body></html>",
                    {"content-type": "text/html"},
                )
            return (
                faults.error_status,
                {
                    "error": "processing_failed",
                    "message": "Failed to start transcription job",
                    "details": {"reason": "internal_error"},
                },
                {},
            )
        if faults.malformed:
            return 200, b"{not json", {}
        return None

    # -- the contract --------------------------------------------------------------------
    def _submit(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        try:
            request = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return (
                400,
                {
                    "error": "invalid_request",
                    "message": "Invalid JSON in request body",
                    "details": {"reason": "malformed_json"},
                },
                {},
            )
        if self.faults.not_ready:
            retry = {"retry-after": str(self.faults.retry_after)} if self.faults.retry_after else {}
            return (
                503,
                {
                    "error": "service_unavailable",
                    "message": "TTTranscribe is not ready yet",
                    "details": _NOT_READY,
                },
                retry,
            )
        url = request.get("url") if isinstance(request, dict) else None
        if not isinstance(url, str) or not (_VIDEO.match(url.strip()) or _SHORT.match(url.strip())):
            return (
                400,
                {
                    "error": "invalid_url",
                    "message": "URL must be a valid TikTok video URL",
                    "details": {
                        "providedUrl": str(url) if url is not None else "undefined",
                        "expectedFormat": "https://www.tiktok.com/@username/video/1234567890",
                    },
                },
                {},
            )
        url = url.strip()
        request_id = request.get("requestId")
        job = Job(
            str(uuid.uuid4()),
            url,
            iso(time.time()),
            fails="/@fail" in url,
            request_id=request_id if isinstance(request_id, str) else "",
        )
        self.jobs[job.id] = job
        self.stats.jobs_created += 1
        if self.faults.cache_hits and _cache_key(url) in self._cache:
            job.cache_hit = True
            self._finish(job, "completed")
        elif self.settle_seconds > 0:
            asyncio.get_running_loop().call_later(self.settle_seconds, self._settle, job.id)
        return (
            202,
            {
                "id": job.id,
                "requestId": job.id,
                "request_id": job.id,
                "statusPollUrl": f"{self.base_url}/status/{job.id}",
                "status": "queued",
                "submittedAt": job.submitted_at,
                "estimatedProcessingTime": 300,
                "url": url,
            },
            {},
        )

    def _status(self, job_id: str) -> tuple[int, Any, dict[str, str]]:
        job = self.jobs.get(job_id)
        if job is None:
            return (
                404,
                {
                    "error": "job_not_found",
                    "message": "Transcription job not found",
                    "details": {"jobId": job_id},
                },
                {},
            )
        if not job.terminal:
            job.polls += 1
            if job.fails and job.polls >= 3:
                self._finish(job, "failed")
            elif job.polls >= len(_PHASES):
                self._finish(job, "completed")
        status, progress, step = (
            _PHASES[-1] if job.terminal else _PHASES[min(job.polls, len(_PHASES)) - 1]
        )
        body: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "progress": progress,
            "submittedAt": job.submitted_at,
            "currentStep": step,
        }
        if job.terminal == "failed":
            body.update(
                status="failed", progress=0, currentStep="failed", error=_FAILURE, message=_FAILURE
            )
        elif job.terminal == "completed":
            body.update(
                completedAt=job.completed_at,
                result={
                    "transcription": TRANSCRIPT,
                    "confidence": 0.95,
                    "language": "en",
                    "duration": 12.5,
                    "wordCount": len(TRANSCRIPT.split()),
                    "speakerCount": 1,
                    "audioQuality": "high",
                    "processingTime": 1,
                },
                metadata={
                    "url": job.url,
                    "title": "TikTok Video",
                    "author": "unknown",
                    "description": "Transcribed TikTok video",
                },
                cacheHit=job.cache_hit,
            )
        body.update(
            statusUrl=f"{self.base_url}/status/{job.id}", pollIntervalSeconds=3, request_id=job.id
        )
        return 200, body, {}

    def _settle(self, job_id: str) -> None:
        """No poll came in time: a failing job fails, and with a webhook target a job
        completes, so a client that never polls still gets its webhook.  A job that was
        polled follows its polls alone, so poll-driven tests stay deterministic."""
        job = self.jobs.get(job_id)
        if job is None or job.terminal or job.polls:
            return
        if job.fails:
            self._finish(job, "failed")
        elif job.request_id and self.webhooks.url:
            self._finish(job, "completed")

    def _finish(self, job: Job, status: str) -> None:
        """The terminal state, reached once per job; its webhook goes out once, from here."""
        job.terminal = status
        job.completed_at = iso(time.time())
        if status == "completed" and not job.cache_hit:
            self._cache.add(_cache_key(job.url))
        if not (job.request_id and self.webhooks.url):
            return
        failed = status == "failed"
        payload = webhook_payload(
            job_id=job.id,
            request_id=job.request_id,
            status=status,
            usage=usage_of(
                0 if failed else 12.5, 0 if failed else len(TRANSCRIPT), 0 if job.cache_hit else 1
            ),
            secret=self.webhooks.secret,
            error=_FAILURE if failed else None,
            cache_hit=None if failed else job.cache_hit,
        )
        task = asyncio.get_running_loop().create_task(self._deliver(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, payload: dict[str, Any]) -> None:
        self.stats.webhooks_sent += 1
        error = await self.webhooks.send(payload)
        if error:
            self.stats.webhooks_failed.append({"jobId": payload["jobId"], "lastError": error})
        else:
            self.stats.webhooks_delivered += 1
