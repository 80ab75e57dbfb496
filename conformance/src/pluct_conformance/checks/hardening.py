"""Hostile input: malformed bodies, odd ids, lookalike URLs, SSRF and path tricks. No 5xx."""

from __future__ import annotations

import httpx

from pluct_conformance.registry import (
    Failure,
    check,
    error_code,
    expect,
    expect_status,
    said,
)
from pluct_conformance.target import Target

LOOKALIKES = [
    "https://example.com/x.wav",
    "https://example.com/?q=tiktok.com",
    "https://www.tiktok.com.evil.example/@u/video/1",
    "https://eviltiktok.com/@u/video/1",
    "http://www.tiktok.com/@u/video/1",
    "javascript:alert(1)//tiktok.com",
    'https://www.tiktok.com/@u/video/1"; rm -rf /',
]
SSRF = [
    "http://127.0.0.1:8787/health?tiktok.com",
    "https://127.0.0.1/@u/video/1",
    "https://localhost/@u/video/1",
    "https://[::1]/@u/video/1",
    "https://169.254.169.254/latest/meta-data/?tiktok.com",
    "https://10.0.0.1/@u/video/1",
    "https://192.168.1.1/@u/video/1",
    "https://www.tiktok.com@127.0.0.1/@u/video/1",
    "https://user:pass@www.tiktok.com@10.0.0.1/@u/video/1",
    "https://0x7f000001/@u/video/1",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_PING",
]
TRAVERSAL = [
    "%2E%2E%2Fhealth",
    "..%2F..%2Fadmin",
    "%2e%2e",
    "a%2Fb",
    "a%3Fx%3D1",
    "a%23frag",
    "a%00b",
    "%252E%252E%252Fhealth",
    "x" * 400,
]


def _no_5xx(response: httpx.Response) -> None:
    if response.status_code >= 500:
        raise Failure(
            f"{response.status_code} for hostile input: {response.text[:120]}", response.request
        )


@check(
    "hardening",
    "strict",
    "malformed JSON bodies get a 4xx, never a 5xx",
    promise="spec: components.responses.BadRequest",
)
async def malformed_json(target: Target) -> None:
    async with target.client() as client:
        for path, headers in (
            ("/v1/credits/add", target.admin()),
            ("/v1/vend-token", target.bearer("malformed")),
        ):
            for body in (b'{"userId": ', b"\xff\xfe", b"[]", b"null", b'"text"', b"{" * 5000):
                response = await client.post(
                    path, content=body, headers={**headers, "Content-Type": "application/json"}
                )
                expect_status(response, 400, 401, 402, 413, 415, 422)


@check(
    "hardening",
    "strict",
    "wrong types (fractional, string, boolean, huge) amounts are 4xx and grant nothing",
    promise="spec: components.schemas.GrantRequest",
)
async def wrong_types(target: Target) -> None:
    async with target.client() as client:
        label = "types"
        for amount in (2.5, "5", True, None, -1, 0, 10**30, [1], {"n": 1}):
            response = await client.post(
                "/v1/credits/add",
                headers=target.admin(),
                json={"userId": target.user_id(label), "amount": amount},
            )
            expect_status(response, 400, 422)
        balance = await client.get("/v1/credits/balance", headers=target.bearer(label))
        if balance.status_code == 200 and balance.json().get("balance") != 0:
            raise Failure(
                f"a rejected grant still moved the balance to {balance.json().get('balance')}",
                balance.request,
            )


@check(
    "hardening",
    "strict",
    "oversized bodies are refused with a 4xx",
    promise="spec: components.responses.PayloadTooLarge",
)
async def huge_body(target: Target) -> None:
    async with target.client() as client:
        body = b'{"userId":"' + b"a" * 2_000_000 + b'","amount":1}'
        response = await client.post(
            "/v1/credits/add",
            content=body,
            headers={**target.admin(), "Content-Type": "application/json"},
        )
        expect_status(response, 400, 413, 422)


@check(
    "hardening",
    "strict",
    "unicode and very long ids and keys are handled without a 5xx",
    promise="spec: components.schemas.GrantRequest (userId pattern)",
)
async def odd_ids(target: Target) -> None:
    async with target.client() as client:
        for user in ("ünïcødé-👾", "a" * 5000, "../../etc", "{u:x}", ""):
            response = await client.post(
                "/v1/credits/add", headers=target.admin(), json={"userId": user, "amount": 1}
            )
            _no_5xx(response)
        for key in ("é" * 300, "k" * 10_000, "\u0000", "a b"):
            response = await client.post(
                "/v1/vend-token",
                headers=target.bearer("odd-key"),
                json={"userId": target.user_id("odd-key"), "clientRequestId": key},
            )
            _no_5xx(response)
        token = target.mint("\u202e" * 3 + "x" * 300)
        response = await client.get(
            "/v1/credits/balance", headers={"Authorization": f"Bearer {token}"}
        )
        _no_5xx(response)


@check(
    "hardening",
    "seed",
    "non-TikTok and lookalike URLs are refused (400/422) by /meta, before any fetch",
    promise="seed: Metadata Caching (TikTok Validation: only TikTok URLs accepted)",
)
async def lookalike_urls(target: Target) -> None:
    async with target.client() as client:
        for url in LOOKALIKES:
            response = await client.get("/meta", params={"url": url})
            expect_status(response, 400, 422, upstream_ok=False)


@check(
    "hardening",
    "seed",
    "non-TikTok and lookalike URLs are refused (400/422) by /ttt/transcribe, never forwarded",
    promise="seed: TTTranscribe Proxy Integration (TikTok URL Validation, 400)",
)
async def lookalike_transcribe(target: Target) -> None:
    async with target.client() as client:
        await target.funded(client, "lookalike", 1)
        token = await target.vend(client, "lookalike")
        for url in LOOKALIKES:
            response = await target.submit(client, token, url)
            expect_status(response, 400, 422, upstream_ok=False)
            expect(
                not error_code(response).startswith("upstream"),
                f"a non-TikTok URL was forwarded, and refused upstream: {said(response)}",
                response,
            )


@check(
    "hardening",
    "strict",
    "SSRF probes on /meta (loopback, private ranges, userinfo, schemes) are refused",
    promise="spec: /meta (SSRF-safe fetch)",
)
async def ssrf_meta(target: Target) -> None:
    async with target.client() as client:
        for url in SSRF:
            expect_status(
                await client.get("/meta", params={"url": url}), 400, 422, upstream_ok=False
            )


@check(
    "hardening",
    "strict",
    "redirects out of TikTok are not followed by /meta",
    promise="spec: /meta (redirects only within TikTok)",
)
async def ssrf_redirect(target: Target) -> None:
    async with target.client() as client:
        response = await client.get("/meta", params={"url": "https://vm.tiktok.com/EVIL/"})
        if response.status_code >= 500 and response.status_code not in (502, 504):
            _no_5xx(response)
        if response.status_code == 200 and "internal" in response.text:
            raise Failure("a redirect to an internal address was followed", response.request)


@check(
    "hardening",
    "strict",
    "path tricks on /ttt/status/{id} never reach another upstream path",
    promise="spec: /ttt/status/{jobId} (jobId pattern)",
)
async def status_traversal(target: Target) -> None:
    async with target.client() as client:
        headers = target.bearer("traversal")
        for trick in TRAVERSAL:
            response = await client.get(f"/ttt/status/{trick}", headers=headers)
            expect_status(response, 400, 401, 404)


@check(
    "hardening",
    "strict",
    "a 1 MiB request header is refused (431/400, or the connection closed), never served",
    promise="spec: info (header bytes ≤ 16 KiB → 431)",
)
async def oversized_header(target: Target) -> None:
    async with target.client() as client:
        try:
            response = await client.get(
                "/health", headers={"X-Conformance-Padding": "a" * (1 << 20)}
            )
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError):
            return  # refused or closed: the header was not accepted
        expect_status(response, 431, 400, upstream_ok=False)


@check(
    "hardening",
    "strict",
    "a limit written with non-ASCII digits (superscript two) is 400, never a 500",
    promise="spec: /v1/admin/audit (limit is an integer)",
)
async def non_ascii_digits(target: Target) -> None:
    async with target.client() as client:
        for limit in ("%C2%B2", "%D9%A3", "%EF%BC%95"):  # ², Arabic-Indic 3, full-width 5
            response = await client.get(
                f"/v1/admin/audit?userId={target.user_id('digits')}&limit={limit}",
                headers=target.admin(),
            )
            expect_status(response, 400, upstream_ok=False)


@check(
    "hardening",
    "strict",
    "an id with a trailing newline is 400 (carol\\n is not carol)",
    promise="spec: components.schemas.GrantRequest (userId pattern, full match)",
)
async def trailing_newline_id(target: Target) -> None:
    async with target.client() as client:
        response = await client.post(
            "/v1/credits/add",
            headers=target.admin(),
            json={"userId": target.user_id("carol") + "\n", "amount": 1},
        )
        expect_status(response, 400, upstream_ok=False)
