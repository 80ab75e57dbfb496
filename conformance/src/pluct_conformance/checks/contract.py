"""Contract details the seed README promises and the real mobile client parses."""

from __future__ import annotations

import asyncio

import httpx

from pluct_conformance.registry import (
    Failure,
    Inconclusive,
    check,
    expect,
    expect_code,
    expect_status,
    is_upstream_fault,
    said,
)
from pluct_conformance.target import Target

ENVELOPE = ("ok", "code", "message")
SEED_RESPONSES = "seed: API Response Examples"


def _envelope(response: httpx.Response) -> dict[str, object]:
    try:
        body = response.json()
    except ValueError:
        raise Failure(f"error body is not JSON: {said(response)}", response.request) from None
    missing = [k for k in ENVELOPE if k not in body]
    expect(
        not missing and body.get("ok") is False,
        f"error envelope lacks {missing or 'ok:false'}: {said(response)}",
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


@check(
    "contract",
    "strict",
    "errors use one envelope {ok:false, code, message, details}",
    promise="spec: components.schemas.Error",
)
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
    "strict",
    "unknown routes are 404 with code route_not_found (the app's fallback relies on it)",
    promise="spec: components.responses.NotFound (mobile client §5.8)",
)
async def route_not_found(target: Target) -> None:
    async with target.client() as client:
        for path in ("/v1/quote", "/v1/jobs/x", "/definitely/not/here"):
            expect_code(await client.get(path), 404, "route_not_found")


@check(
    "contract",
    "seed",
    "GET /health: status, integer uptimeSeconds (a real uptime), version",
    promise="seed: API Response Examples (Health Check)",
)
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


@check(
    "contract",
    "strict",
    "HEAD on GET routes: HEAD /health and /health/services are 200 with an empty body",
    promise="spec: /health, /health/services (HEAD)",
)
async def head_routes(target: Target) -> None:
    async with target.client() as client:
        for path in ("/health", "/health/services"):
            response = await client.head(path)
            expect_status(response, 200)
            expect(
                response.content == b"",
                f"HEAD {path} sent {len(response.content)} body bytes",
                response,
            )


@check(
    "contract",
    "seed",
    "GET /health/services shows TTTranscribe's health and the circuit breaker's state",
    promise="seed: TTTranscribe Proxy Integration (Circuit Breaker)",
)
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
    breaker = body.get("circuitBreaker")
    state = breaker.get("status") or breaker.get("state") if isinstance(breaker, dict) else breaker
    expect(isinstance(state, str), f"no circuit breaker state (got {breaker!r})", response)


@check(
    "contract",
    "strict",
    "CORS: no origin is granted unless configured; a configured origin's preflight is",
    promise="spec: CORS_ORIGINS (issue 18 §7)",
)
async def cors_preflight(target: Target) -> None:
    async with target.client() as client:
        stranger = "https://conformance-stranger.invalid"
        response = await client.options(
            "/v1/credits/balance",
            headers={
                "Origin": stranger,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        granted = response.headers.get("access-control-allow-origin")
        expect(
            granted not in (stranger, "*"),
            f"an arbitrary origin was granted (Access-Control-Allow-Origin: {granted})",
            response,
        )
        expect(response.status_code < 500, f"preflight: {said(response)}", response)
        if target.cors_origin:
            response = await client.options(
                "/v1/credits/balance",
                headers={
                    "Origin": target.cors_origin,
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization,content-type",
                },
            )
            expect_status(response, 200, 204)
            granted = response.headers.get("access-control-allow-origin")
            expect(
                granted in (target.cors_origin, "*"),
                f"the configured origin's preflight was not granted (got {granted!r})",
                response,
            )


@check(
    "contract",
    "seed",
    "balance has userId, integer balance and updatedAt",
    promise="seed: API Response Examples (Credit Balance Check)",
)
async def balance_seed_fields(target: Target) -> None:
    async with target.client() as client:
        headers = await target.funded(client, "seed-fields", 3)
        response = await client.get("/v1/credits/balance", headers=headers)
    expect_status(response, 200)
    body = response.json()
    _str_field(body, "userId", response)
    _str_field(body, "updatedAt", response)
    _int_field(body, "balance", response)
    expect(body["balance"] == 3, f"balance {body['balance']} after a grant of 3", response)


@check(
    "contract",
    "strict",
    "balance also has main and bonus (the app shows main + bonus)",
    promise="spec: components.schemas.Balance (mobile client §5.2)",
)
async def balance_fields(target: Target) -> None:
    async with target.client() as client:
        headers = await target.funded(client, "fields", 3)
        response = await client.get("/v1/credits/balance", headers=headers)
    expect_status(response, 200)
    body = response.json()
    for name in ("balance", "main", "bonus"):
        _int_field(body, name, response)
    expect(
        body["main"] + body["bonus"] == body["balance"] == 3, "main + bonus must show the balance"
    )


@check(
    "contract",
    "seed",
    "vend returns token, scope, expiresAt, integer balanceAfter, requestId; 402 at zero",
    promise="seed: API Response Examples (Successful Token Vending, 402)",
)
async def vend_fields(target: Target) -> None:
    label = "vend-fields"
    async with target.client() as client:
        await target.funded(client, label, 1)
        response = await target.vend_response(client, label)
        expect_status(response, 200)
        body = response.json()
        for name in ("token", "scope", "expiresAt", "requestId"):
            _str_field(body, name, response)
        _int_field(body, "balanceAfter", response)
        expect(body["balanceAfter"] == 0, f"balanceAfter {body['balanceAfter']} after 1 of 1")
        expect_status(await target.vend_response(client, label), 402)


@check(
    "contract",
    "seed",
    "a vended token lives at most 15 minutes (integer expiresIn ≤ 900)",
    promise="seed: Short-lived Tokens (15-minute expiration)",
)
async def vend_lifetime(target: Target) -> None:
    async with target.client() as client:
        await target.funded(client, "lifetime", 1)
        body = await target.vend_body_of(client, "lifetime")
    value = body.get("expiresIn")
    expect(isinstance(value, int) and 0 < value <= 900, f"expiresIn is {value!r}")


@check(
    "contract",
    "seed",
    "a user making 130 requests in a minute is rate limited (429) past 100",
    promise="seed: Rate Limiting (100 requests/minute per user)",
)
async def rate_limit_seed(target: Target) -> None:
    async with target.client(connections=150) as client:
        headers = target.bearer("rate-seed")
        responses = await asyncio.gather(
            *(client.get("/v1/credits/balance", headers=headers) for _ in range(130))
        )
    ok = sum(1 for r in responses if r.status_code == 200)
    limited = [r for r in responses if r.status_code == 429]
    expect(bool(limited), f"130 requests in a minute were never limited ({ok} × 200)")
    expect(ok >= 90, f"only {ok} of the first 130 requests were served")


@check(
    "contract",
    "strict",
    "RateLimit headers on success; past the limit 429 with Retry-After and retryAfterSeconds",
    promise="spec: components.responses.RateLimited",
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
    "seed",
    "every vend and every refusal is in the audit trail (GET /v1/admin/audit)",
    promise="seed: Comprehensive Audit Trail (both vends and refusals logged)",
)
async def audit_written(target: Target) -> None:
    label = "audit"
    async with target.client() as client:
        await target.funded(client, label, 1)
        first = await target.vend_response(client, label)
        expect_status(first, 200)
        expect_status(await target.vend_response(client, label), 402)
        response = await client.get(
            "/v1/admin/audit", params={"userId": target.user_id(label)}, headers=target.admin()
        )
    expect(
        response.status_code == 200, f"the audit trail cannot be read: {said(response)}", response
    )
    actions = [e.get("action") for e in response.json().get("entries", [])]
    expect(
        "vend" in actions and any(str(a).startswith("vend_") for a in actions),
        f"a vend and a refusal were made; the trail shows {actions}",
        response,
    )


@check(
    "contract",
    "strict",
    "/meta with a missing or non-TikTok url is 422 invalid_url",
    promise="spec: /meta (the original Worker's invalid_url)",
)
async def meta_invalid_url(target: Target) -> None:
    async with target.client() as client:
        expect_code(await client.get("/meta"), 422, "invalid_url")
        expect_code(
            await client.get("/meta", params={"url": "https://example.com/x"}), 422, "invalid_url"
        )


@check(
    "contract",
    "seed",
    "/meta answers title, author, description, integer duration, handle, url; then from cache",
    promise="seed: Metadata Caching (meta:<url>, 1-6 h TTL)",
)
async def meta_cache(target: Target) -> None:
    async with target.client() as client:
        video = int(target.run_id, 16) % 10**16
        url = f"https://www.tiktok.com/@pluct_conformance/video/73{video:016d}"
        first = await client.get("/meta", params={"url": url})
        if is_upstream_fault(first) or first.status_code in (500, 502, 503, 504):
            raise Inconclusive(f"TikTok unreachable from the target: {said(first)}", first.request)
        expect_status(first, 200)
        body = first.json()
        for name in ("title", "author", "description", "handle", "url"):
            _str_field(body, name, first)
        _int_field(body, "duration", first)
        second = await client.get("/meta", params={"url": url})
    expect_status(second, 200)
    expect(
        second.json().get("cached") is True,
        "the second fetch was not served from the cache",
        second,
    )


@check(
    "contract",
    "strict",
    "transcribe answers jobId, status and url; status answers jobId, status, integer progress",
    promise="spec: /ttt/transcribe, /ttt/status/{jobId} (mobile client §5.5-5.6)",
)
async def transcription_fields(target: Target) -> None:
    async with target.client() as client:
        await target.require_upstream(client)
        await target.funded(client, "job-fields", 1)
        token = await target.vend(client, "job-fields")
        submitted = await target.submit(client, token)
        expect_status(submitted, 200, 202)
        body = submitted.json()
        for name in ("jobId", "status", "url"):
            _str_field(body, name, submitted)
        status = await client.get(f"/ttt/status/{body['jobId']}", headers=target.service(token))
        expect_status(status, 200)
        polled = status.json()
        _str_field(polled, "jobId", status)
        _str_field(polled, "status", status)
        if "progress" in polled:
            _int_field(polled, "progress", status)
        if "error" in polled:
            _str_field(polled, "error", status)


@check(
    "contract",
    "strict",
    "GET /ttt/poll/{jobId} with the user JWT: owner 200 (jobId, status); others 404 job_not_found",
    promise="spec: /ttt/poll/{jobId} (mobile client §5.7)",
)
async def poll_route(target: Target) -> None:
    async with target.client() as client:
        await target.require_upstream(client)
        _token, job_id = await target.accepted_job(client, "poller")
        mine = await client.get(f"/ttt/poll/{job_id}", headers=target.bearer("poller"))
        expect_status(mine, 200)
        body = mine.json()
        expect(body.get("jobId") == job_id, f"jobId is {body.get('jobId')!r}", mine)
        _str_field(body, "status", mine)
        other = await client.get(f"/ttt/poll/{job_id}", headers=target.bearer("not-the-poller"))
        expect_code(other, 404, "job_not_found")
