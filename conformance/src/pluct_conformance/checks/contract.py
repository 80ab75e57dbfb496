"""Contract details the seed README promises and the real mobile client parses."""

from __future__ import annotations

import asyncio

import httpx

from pluct_conformance.registry import Failure, check, expect, expect_status
from pluct_conformance.target import VIDEO_URL, Target

ENVELOPE = ("ok", "code", "message")


def _envelope(response: httpx.Response) -> dict[str, object]:
    try:
        body = response.json()
    except ValueError:
        raise Failure("error body is not JSON", response.request) from None
    missing = [k for k in ENVELOPE if k not in body]
    expect(
        not missing and body.get("ok") is False,
        f"error envelope lacks {missing or 'ok:false'}",
        response,
    )
    return dict(body)


def _int_field(body: dict[str, object], name: str, response: httpx.Response) -> None:
    value = body.get(name)
    expect(
        isinstance(value, int) and not isinstance(value, bool),
        f"{name} must be an integer, got {value!r}",
        response,
    )


def _str_field(body: dict[str, object], name: str, response: httpx.Response) -> None:
    expect(
        isinstance(body.get(name), str),
        f"{name} must be a string, got {body.get(name)!r}",
        response,
    )


@check("contract", "strict", "errors use one envelope {ok:false, code, message, details}")
async def error_envelope(target: Target) -> None:
    async with target.client() as client:
        for response in (
            await client.get("/v1/credits/balance"),
            await client.post("/v1/credits/add", json={"userId": "x", "amount": 1}),
            await client.get("/no/such/route"),
        ):
            body = _envelope(response)
            expect(isinstance(body.get("details", {}), dict), "details must be an object", response)


@check(
    "contract",
    "seed",
    "unknown routes are 404 with code route_not_found (the app's fallback relies on it)",
)
async def route_not_found(target: Target) -> None:
    async with target.client() as client:
        for path in ("/v1/quote", "/v1/jobs/x", "/definitely/not/here"):
            response = await client.get(path)
            expect_status(response, 404)
            expect(
                _envelope(response).get("code") == "route_not_found",
                "code is not route_not_found",
                response,
            )


@check("contract", "seed", "GET /health: status, integer uptimeSeconds (a real uptime), version")
async def health(target: Target) -> None:
    async with target.client() as client:
        response = await client.get("/health")
    expect_status(response, 200)
    body = response.json()
    _str_field(body, "status", response)
    _str_field(body, "version", response)
    _int_field(body, "uptimeSeconds", response)
    expect(
        0 <= body["uptimeSeconds"] < 10 * 365 * 86400,
        f"uptimeSeconds {body['uptimeSeconds']} is not an uptime",
        response,
    )


@check("contract", "seed", "GET /health/services gives ttt health as the app reads it")
async def service_health(target: Target) -> None:
    async with target.client() as client:
        response = await client.get("/health/services")
    expect_status(response, 200)
    body = response.json()
    status = (body.get("connectivity") or {}).get("ttt") or (body.get("ttt") or {}).get("status")
    expect(
        isinstance(status, str)
        and status.lower() in {"healthy", "degraded", "unhealthy", "error", "unknown"},
        f"no readable ttt status (got {status!r})",
        response,
    )


@check(
    "contract",
    "strict",
    "balance has the fields the app requires: userId, integer balance, updatedAt, main, bonus",
)
async def balance_fields(target: Target) -> None:
    async with target.client() as client:
        headers = await target.funded(client, "fields", 3)
        response = await client.get("/v1/credits/balance", headers=headers)
    expect_status(response, 200)
    body = response.json()
    _str_field(body, "userId", response)
    _str_field(body, "updatedAt", response)
    for name in ("balance", "main", "bonus"):
        _int_field(body, name, response)
    expect(
        body["main"] + body["bonus"] == body["balance"] == 3,
        "main + bonus must show the balance",
        response,
    )


@check(
    "contract",
    "seed",
    "vend returns token, integer expiresIn and balanceAfter, requestId; 402 at zero",
)
async def vend_fields(target: Target) -> None:
    async with target.client() as client:
        headers = await target.funded(client, "vend-fields", 1)
        response = await client.post(
            "/v1/vend-token", headers=headers, json={"userId": target.user_id("vend-fields")}
        )
        expect_status(response, 200)
        body = response.json()
        _str_field(body, "token", response)
        _str_field(body, "requestId", response)
        _int_field(body, "expiresIn", response)
        _int_field(body, "balanceAfter", response)
        expect(
            body["balanceAfter"] == 0,
            f"balanceAfter {body['balanceAfter']} after spending 1 of 1",
            response,
        )
        refused = await client.post(
            "/v1/vend-token", headers=headers, json={"userId": target.user_id("vend-fields")}
        )
        expect_status(refused, 402)


@check(
    "contract",
    "strict",
    "RateLimit headers on success; past the limit 429 with Retry-After and retryAfterSeconds",
)
async def rate_limit(target: Target) -> None:
    async with target.client(connections=150) as client:
        headers = target.bearer("rate")
        responses = await asyncio.gather(
            *(client.get("/v1/credits/balance", headers=headers) for _ in range(130))
        )
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    expect(
        bool(ok) and all("ratelimit" in r.headers for r in ok),
        "successes lack RateLimit headers",
        responses[0],
    )
    expect(bool(limited), "130 requests in a minute were never limited", responses[-1])
    sample = limited[0]
    expect("retry-after" in sample.headers, "429 lacks Retry-After", sample)
    _int_field(sample.json(), "retryAfterSeconds", sample)


@check(
    "contract",
    "strict",
    "transcribe answers jobId, status and url; status answers jobId, status, integer progress",
)
async def transcription_fields(target: Target) -> None:
    async with target.client() as client:
        await target.require_upstream(client)
        user = await target.funded(client, "job-fields", 1)
        token = await target.vend(client, user)
        submitted = await client.post(
            "/ttt/transcribe",
            json={"url": VIDEO_URL, "clientRequestId": f"{target.run_id}-job"},
            headers={"Authorization": f"Bearer {token}"},
        )
        expect_status(submitted, 200, 202)
        body = submitted.json()
        for name in ("jobId", "status", "url"):
            _str_field(body, name, submitted)
        status = await client.get(
            f"/ttt/status/{body['jobId']}", headers={"Authorization": f"Bearer {token}"}
        )
        expect_status(status, 200)
        polled = status.json()
        _str_field(polled, "jobId", status)
        _str_field(polled, "status", status)
        if "progress" in polled:
            _int_field(polled, "progress", status)
        if "error" in polled:
            _str_field(polled, "error", status)
