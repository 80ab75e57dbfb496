"""Tokens and keys: every wrong credential is refused with the right status, never a 5xx."""

from __future__ import annotations

import base64
import json
import time

import httpx

from pluct_conformance.registry import check, expect, expect_code, expect_status, said
from pluct_conformance.target import Target

SEED_JWT = "seed: JWT Authentication & Authorization"
SEED_SECURITY = "seed: Security / Authentication Methods"
SPEC_USER = "spec: components.securitySchemes.userBearer"


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _balance_with(target: Target, token: str) -> httpx.Response:
    async with target.client() as client:
        return await client.get("/v1/credits/balance", headers=target.app_headers(None, token))


@check("auth", "seed", "alg:none token is refused with 401", promise=SEED_JWT)
async def alg_none(target: Target) -> None:
    claims = {
        "sub": target.user_id("none"),
        "scope": "ttt:transcribe",
        "exp": int(time.time()) + 900,
    }
    token = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + "."
    expect_status(await _balance_with(target, token), 401)


@check("auth", "seed", "HS512-signed token is refused with 401 (HS256 only)", promise=SEED_JWT)
async def hs512(target: Target) -> None:
    expect_status(
        await _balance_with(target, target.mint(target.user_id("hs512"), algorithm="HS512")), 401
    )


@check(
    "auth",
    "seed",
    "RS256 header with an HMAC-style signature (algorithm confusion) is 401",
    promise=SEED_JWT,
)
async def rs256_confusion(target: Target) -> None:
    claims = {"sub": target.user_id("rs"), "exp": int(time.time()) + 900}
    token = _b64({"alg": "RS256", "typ": "JWT"}) + "." + _b64(claims) + ".c2lnbmF0dXJl"
    expect_status(await _balance_with(target, token), 401)


@check("auth", "seed", "token signed with the wrong secret is 401", promise=SEED_JWT)
async def wrong_secret(target: Target) -> None:
    token = target.mint(target.user_id("wrong"), secret="definitely-not-the-secret-0123456789")
    expect_status(await _balance_with(target, token), 401)


@check("auth", "seed", "expired token is 401", promise=SEED_JWT)
async def expired(target: Target) -> None:
    now = int(time.time())
    token = target.mint(target.user_id("old"), iat=now - 7200, exp=now - 3600)
    expect_status(await _balance_with(target, token), 401)


@check(
    "auth",
    "seed",
    "token without exp is 401 (it would never expire)",
    promise="seed: Security Features (JWT Tokens: 15-minute expiration)",
)
async def missing_exp(target: Target) -> None:
    expect_status(await _balance_with(target, target.mint(target.user_id("noexp"), exp=None)), 401)


@check(
    "auth",
    "strict",
    "exp = 10**400 or a string is 401 invalid_token (only integer NumericDates in range)",
    promise=SPEC_USER,
)
async def exp_out_of_range(target: Target) -> None:
    sub = json.dumps(target.user_id("exp-odd"))
    now = int(time.time())
    for exp in ("1" + "0" * 400, json.dumps(str(now + 900))):
        token = target.sign_raw(
            f'{{"sub":{sub},"aud":"pluct-business-engine","scope":"ttt:transcribe",'
            f'"iat":{now},"exp":{exp}}}'
        )
        expect_code(await _balance_with(target, token), 401, "invalid_token")


@check(
    "auth",
    "strict",
    "a token over 8 KiB is 401 before any decoding",
    promise="spec: components.securitySchemes.userBearer (tokens over 8 KiB refused)",
)
async def oversized_jwt(target: Target) -> None:
    token = target.mint(target.user_id("big-jwt"), padding="p" * 9000)
    expect(len(token) > 8192, f"token is only {len(token)} bytes")
    expect_status(await _balance_with(target, token), 401)


@check(
    "auth", "strict", "token without sub is 401 (no shared 'undefined' account)", promise=SPEC_USER
)
async def missing_sub(target: Target) -> None:
    expect_status(await _balance_with(target, target.mint(None)), 401)


@check("auth", "seed", "token with a future nbf is 401", promise=SEED_JWT)
async def future_nbf(target: Target) -> None:
    token = target.mint(target.user_id("nbf"), nbf=int(time.time()) + 3600)
    expect_status(await _balance_with(target, token), 401)


@check("auth", "seed", "missing Authorization header is 401", promise="seed: User JWT Required")
async def missing_header(target: Target) -> None:
    async with target.client() as client:
        label = "no-auth"
        expect_status(
            await client.get("/v1/credits/balance", headers=target.app_headers(label)), 401
        )
        expect_status(
            await client.post(
                "/v1/vend-token", headers=target.app_headers(label), json=target.vend_body(label)
            ),
            401,
        )


@check(
    "auth",
    "strict",
    "the real app's tokens (aud claim; iat hours ahead) are accepted",
    promise="spec: components.securitySchemes.userBearer (app compatibility)",
)
async def app_tokens_accepted(target: Target) -> None:
    now = int(time.time())
    for token in (
        target.mint(target.user_id("era-c")),
        target.mint(target.user_id("era-a"), aud=None, iat=now + 20150, exp=now + 20150 + 900),
    ):
        expect_status(await _balance_with(target, token), 200)


@check(
    "auth",
    "seed",
    "vend without the ttt:transcribe scope is refused (401/403) and charges nothing",
    promise="seed: Scope Validation (ttt:transcribe scope required for token vending)",
)
async def missing_scope(target: Target) -> None:
    async with target.client() as client:
        label = "noscope"
        await target.funded(client, label, 1)
        response = await client.post(
            "/v1/vend-token",
            json=target.vend_body(label),
            headers=target.bearer(label, scope="profile"),
        )
        expect_status(response, 401, 403)


@check(
    "auth",
    "seed",
    "a user token (even with ttt:transcribe) cannot transcribe: only a paid, vended token can",
    promise="seed: Revenue Protection (no way to transcribe without paying credits)",
)
async def user_token_on_transcribe(target: Target) -> None:
    async with target.client() as client:
        response = await target.submit(client, target.mint(target.user_id("direct")))
        expect_status(response, 401, 403, upstream_ok=False)


@check(
    "auth",
    "strict",
    "a vended token is not accepted as a user token",
    promise="spec: components.securitySchemes.userBearer",
)
async def vended_as_user(target: Target) -> None:
    async with target.client() as client:
        await target.funded(client, "vended-user", 1)
        token = await target.vend(client, "vended-user")
        expect_status(await _balance_with(target, token), 401)


@check(
    "auth",
    "strict",
    "a refunded vend's token can no longer transcribe (401 token_refunded)",
    promise="spec: /v1/credits/refund",
)
async def refunded_token(target: Target) -> None:
    async with target.client() as client:
        label = "refunded"
        await target.funded(client, label, 1)
        vend = await target.vend_body_of(client, label)
        refund = await client.post(
            "/v1/credits/refund",
            headers=target.admin(),
            json={"userId": target.user_id(label), "requestId": vend["requestId"]},
        )
        expect(refund.status_code == 200, f"setup: the refund was refused: {said(refund)}", refund)
        expect_code(await target.submit(client, str(vend["token"])), 401, "token_refunded")


@check("auth", "seed", "admin key missing or wrong is 401", promise="seed: Admin Keys (X-API-Key)")
async def admin_key_wrong(target: Target) -> None:
    body = {"userId": target.user_id("admin-probe"), "amount": 1}
    async with target.client() as client:
        expect_status(await client.post("/v1/credits/add", json=body), 401)
        expect_status(
            await client.post("/v1/credits/add", json=body, headers={"X-API-Key": "wrong-key"}), 401
        )


@check(
    "auth",
    "strict",
    "the admin key is not accepted as a Bearer token",
    promise="spec: components.securitySchemes.adminKey",
)
async def admin_key_as_bearer(target: Target) -> None:
    body = {"userId": target.user_id("admin-bearer"), "amount": 1}
    async with target.client() as client:
        response = await client.post(
            "/v1/credits/add",
            json=body,
            headers={"Authorization": f"Bearer {target.admin()['X-API-Key']}"},
        )
        expect_status(response, 401)
