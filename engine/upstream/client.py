"""The httpx client for TTTranscribe.

Each call has one *total* deadline (connect + send + read), enforced with `asyncio.timeout`,
because httpx's timeouts are per phase.  `POST /transcribe` is never retried here: every
accepted POST creates a job upstream, so a retry is the caller's decision (with the same
request id, which is forwarded so the upstream can de-duplicate).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from engine.errors import (
    EngineError,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from engine.upstream.breaker import CircuitBreaker
from engine.version import __version__

USER_AGENT = f"pluct-engine/{__version__}"
_PREVIEW = 500
DEFAULT_RETRY_AFTER_SECONDS = 30
_MAX_RETRY_AFTER_SECONDS = 3600


class UpstreamClientError(EngineError):
    """The upstream refused the request (4xx): its status is kept, its body quoted."""

    code = "upstream_client_error"
    message = "TTTranscribe refused the request"
    guidance = "Check the request; your token stays valid"

    def __init__(self, status: int, text: str) -> None:
        super().__init__(details={"upstreamStatus": status, "upstreamResponse": text[:_PREVIEW]})
        self.status_code = status  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    status_code: int
    body: dict[str, Any]


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return None
    return body if isinstance(body, dict) else None


def _not_ready(response: httpx.Response) -> UpstreamUnavailable:
    """A 503: upstream's readiness gate (§9) or a proxy in front of a sleeping Space.

    Its `Retry-After` is passed on when it is a plain number of seconds (bounded), else 30 s;
    its `reason` and `missing` are quoted so the client can tell a misconfigured upstream.
    """
    raw = response.headers.get("retry-after", "").strip()
    # ASCII only (`str.isdigit` is true of "²"), and short enough for `int()` to take.
    plain = raw.isascii() and raw.isdigit() and len(raw) <= 6
    retry = int(raw) if plain else DEFAULT_RETRY_AFTER_SECONDS
    retry = min(max(retry, 1), _MAX_RETRY_AFTER_SECONDS)
    details: dict[str, Any] = {"upstreamStatus": response.status_code}
    body = _json_object(response)
    inner = body.get("details") if body else None
    if isinstance(inner, dict):
        details.update({k: inner[k] for k in ("reason", "missing") if k in inner})
    elif body is None:
        details["upstreamResponse"] = response.text[:_PREVIEW]
    return UpstreamUnavailable(
        details=details,
        headers={"Retry-After": str(retry)},
        extra={"retryAfterSeconds": retry},
    )


def _bad_body(response: httpx.Response) -> UpstreamError:
    return UpstreamError(
        "TTTranscribe answered with something that is not a JSON object",
        code="upstream_bad_response",
        details={
            "upstreamStatus": response.status_code,
            "upstreamResponse": response.text[:_PREVIEW],
        },
    )


class TTTClient:
    def __init__(
        self,
        base_url: str,
        secret: str,
        breaker: CircuitBreaker,
        *,
        transcribe_timeout: float,
        status_timeout: float,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._secret = secret
        self.breaker = breaker
        self._transcribe_timeout = transcribe_timeout
        self._status_timeout = status_timeout
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(None),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self, method: str, path: str, deadline: float, *, json: Any = None, request_id: str = ""
    ) -> tuple[httpx.Response, dict[str, Any] | None]:
        """One upstream exchange; a 2xx comes back with its JSON object body (None if bad).

        The breaker counts 5xx, unusable 2xx bodies, timeouts and transport errors as failures;
        a 4xx is the upstream working as designed.  A readiness 503 is one failure, counted
        here once; the health probe (`readiness`) never reports to the breaker.
        """
        self.breaker.before_call()
        headers = {"X-Engine-Auth": self._secret, "User-Agent": USER_AGENT}
        if request_id:
            headers["X-Request-Id"] = request_id
        started = time.perf_counter()
        success = False
        try:
            async with asyncio.timeout(deadline):
                response = await self._http.request(
                    method, self.base_url + path, json=json, headers=headers
                )
            body = _json_object(response) if response.is_success else None
            success = response.status_code < 500 and (body is not None or not response.is_success)
            return response, body
        except TimeoutError:
            raise UpstreamTimeout(details={"timeoutSeconds": deadline}) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(
                "TTTranscribe could not be reached", details={"error": type(exc).__name__}
            ) from None
        finally:
            self.breaker.record(success, (time.perf_counter() - started) * 1000)

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code == 503:
            raise _not_ready(response)
        if response.status_code >= 500:
            raise UpstreamError(
                details={
                    "upstreamStatus": response.status_code,
                    "upstreamResponse": response.text[:_PREVIEW],
                }
            )
        if response.status_code >= 400:
            raise UpstreamClientError(response.status_code, response.text)

    async def submit(self, url: str, request_id: str) -> UpstreamReply:
        response, body = await self._call(
            "POST",
            "/transcribe",
            self._transcribe_timeout,
            json={"url": url, "requestId": request_id},
            request_id=request_id,
        )
        self._check(response)
        if body is None:
            raise _bad_body(response)
        if not any(
            isinstance(body.get(k), str) and body.get(k)
            for k in ("id", "jobId", "requestId", "request_id")
        ):
            raise UpstreamError(
                "TTTranscribe accepted the job but sent no id", code="upstream_bad_response"
            )
        return UpstreamReply(response.status_code, body)

    async def status(self, job_id: str) -> UpstreamReply:
        response, body = await self._call(
            "GET", "/status/" + quote(job_id, safe=""), self._status_timeout
        )
        if response.status_code == 404:
            raise NotFound(
                "Transcription job not found upstream (it may have been lost in a restart)",
                code="job_not_found",
                details={"jobId": job_id, "upstreamStatus": 404},
            )
        self._check(response)
        if body is None:
            raise _bad_body(response)
        return UpstreamReply(response.status_code, body)

    async def readiness(self, timeout: float = 3.0) -> Readiness:
        """`GET /ready` (latest upstream), falling back to `GET /health` where it is a 404.

        Both are public upstream, so the secret is not sent.  Not counted by the breaker: the
        monitor reports what it saw, real calls are what trip the breaker.
        """
        started = time.perf_counter()
        endpoint = "/ready"

        def outcome(ok: bool, status: int | None, reason: str) -> Readiness:
            latency = round((time.perf_counter() - started) * 1000, 3)
            return Readiness(ok, endpoint, status, reason, latency)

        try:
            async with asyncio.timeout(timeout):
                response = await self._get_public(endpoint)
                if response.status_code == 404:
                    endpoint = "/health"
                    response = await self._get_public(endpoint)
        except TimeoutError:
            return outcome(False, None, f"no answer within {timeout:g} s")
        except httpx.HTTPError as exc:
            return outcome(False, None, f"unreachable: {type(exc).__name__}")
        if response.is_success:
            return outcome(True, response.status_code, "")
        return outcome(False, response.status_code, _not_ready_reason(response))

    async def _get_public(self, path: str) -> httpx.Response:
        return await self._http.get(self.base_url + path, headers={"User-Agent": USER_AGENT})


@dataclass(frozen=True, slots=True)
class Readiness:
    """One probe's outcome; `reason` says why not ready, in words a person can act on."""

    ok: bool
    endpoint: str
    status_code: int | None
    reason: str
    latency_ms: float


def _not_ready_reason(response: httpx.Response) -> str:
    """`/ready`'s 503 body says `{ready:false, reason, missing}`; anything else is its status."""
    body = _json_object(response)
    reason = body.get("reason") if body else None
    missing = body.get("missing") if body else None
    text = reason if isinstance(reason, str) and reason else f"HTTP {response.status_code}"
    if isinstance(missing, list) and missing:
        text += " (missing: " + ", ".join(str(m) for m in missing[:10]) + ")"
    return text[:_PREVIEW]
