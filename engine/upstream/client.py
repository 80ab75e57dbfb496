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

from engine.errors import EngineError, NotFound, UpstreamError, UpstreamTimeout
from engine.upstream.breaker import CircuitBreaker
from engine.version import __version__

USER_AGENT = f"pluct-engine/{__version__}"
_PREVIEW = 500


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
        a 4xx is the upstream working as designed.
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

    async def probe(self, timeout: float = 2.0) -> bool:
        """Unauthenticated `GET /health`; not counted by the breaker."""
        try:
            async with asyncio.timeout(timeout):
                response = await self._http.get(
                    self.base_url + "/health", headers={"User-Agent": USER_AGENT}
                )
        except (TimeoutError, httpx.HTTPError):
            return False
        return response.is_success
