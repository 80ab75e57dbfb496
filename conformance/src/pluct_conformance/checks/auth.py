"""Tokens and keys: every wrong credential is refused with the right status, never a 5xx."""

from __future__ import annotations

import base64
import json
import time

import httpx

from pluct_conformance.registry import check, expect_status
from pluct_conformance.target import VIDEO_URL, Target


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _balance_with(target: Target, token: str) -> httpx.Response:
    async with target.client() as client:
        return await client.get("/v1/credits/balance", headers={"Authorization": f"Bearer {token}"})


@check("auth", "seed", "alg:none token is refused with 401")
async def alg_none(target: Target) -> None:
    claims = {
        "sub": target.user_id("none"),
        "scope": "ttt:transcribe",
        "exp": int(time.time()) + 900,
    }
    token = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + "."
    expect_status(await _balance_with(target, token), 401)


@check("auth", "seed", "HS512-signed token is refused with 401 (HS256 only)")
async def hs512(target: Target) -> None:
    expect_status(
        await _balance_with(target, target.mint(target.user_id("hs512"), algorithm="HS512")), 401
    )


@check("auth", "seed", "RS256 header with an HMAC-style signature (algorithm confusion) is 401")
async def rs256_confusion(target: Target) -> None:
    claims = {"sub": target.user_id("rs"), "exp": int(time.time()) + 900}
    token = _b64({"alg": "RS256", "typ": "JWT"}) + "." + _b64(claims) + ".c2lnbmF0dXJl"
    expect_status(await _balance_with(target, token), 401)


@check("auth", "seed", "token signed with the wrong secret is 401")
async def wrong_secret(target: Target) -> None:
    token = target.mint(target.user_id("wrong"), secret="definitely-not-the-secret-0123456789")
    expect_status(await _balance_with(target, token), 401)


@check("auth", "seed", "expired token is 401")
async def expired(target: Target) -> None:
    now = int(time.time())
    token = target.mint(target.user_id("old"), iat=now - 7200, exp=now - 3600)
    expect_status(await _balance_with(target, token), 401)


@check("auth", "strict", "token without exp is 401 (it would never expire)")
async def missing_exp(target: Target) -> None:
    expect_status(await _balance_with(target, target.mint(target.user_id("noexp"), exp=None)), 401)


@check("auth", "strict", "token without sub is 401 (no shared 'undefined' account)")
async def missing_sub(target: Target) -> None:
    expect_status(await _balance_with(target, target.mint(None)), 401)


@check("auth", "seed", "token with a future nbf is 401")
async def future_nbf(target: Target) -> None:
    token = target.mint(target.user_id("nbf"), nbf=int(time.time()) + 3600)
    expect_status(await _balance_with(target, token), 401)


@check("auth", "seed", "missing Authorization header is 401")
async def missing_header(target: Target) -> None:
    async with target.client() as client:
        expect_status(await client.get("/v1/credits/balance"), 401)
        expect_status(await client.post("/v1/vend-token", json={}), 401)


@check("auth", "strict", "the real app's tokens (aud claim; iat hours ahead) are accepted")
async def app_tokens_accepted(target: Target) -> None:
    now = int(time.time())
    for token in (
        target.mint(target.user_id("era-c")),
        target.mint(target.user_id("era-a"), aud=None, iat=now + 20150, exp=now + 20150 + 900),
    ):
        expect_status(await _balance_with(target, token), 200)


@check("auth", "strict", "vend without the ttt:transcribe scope is 403")
async def missing_scope(target: Target) -> None:
    async with target.client() as client:
        await target.grant(client, "noscope", 1)
        response = await client.post(
            "/v1/vend-token", json={}, headers=target.bearer("noscope", scope="profile")
        )
        expect_status(response, 403)


@check("auth", "strict", "a user token (even with ttt:transcribe) cannot transcribe")
async def user_token_on_transcribe(target: Target) -> None:
    async with target.client() as client:
        response = await client.post(
            "/ttt/transcribe", json={"url": VIDEO_URL}, headers=target.bearer("direct")
        )
        expect_status(response, 401, 403)


@check("auth", "strict", "a vended token buys one transcription: its reuse is refused")
async def vended_token_reuse(target: Target) -> None:
    async with target.client() as client:
        await target.require_upstream(client)
        token = await target.vend(client, await target.funded(client, "reuse", 1))
        service = {"Authorization": f"Bearer {token}"}
        first = await client.post("/ttt/transcribe", json={"url": VIDEO_URL}, headers=service)
        expect_status(first, 200, 202)
        again = await client.post("/ttt/transcribe", json={"url": VIDEO_URL}, headers=service)
        expect_status(again, 401, 403, 409)


@check("auth", "strict", "a vended token is not accepted as a user token")
async def vended_as_user(target: Target) -> None:
    async with target.client() as client:
        token = await target.vend(client, await target.funded(client, "vended-user", 1))
        response = await client.get(
            "/v1/credits/balance", headers={"Authorization": f"Bearer {token}"}
        )
        expect_status(response, 401)


@check("auth", "seed", "admin key missing or wrong is 401")
async def admin_key_wrong(target: Target) -> None:
    body = {"userId": target.user_id("admin-probe"), "amount": 1}
    async with target.client() as client:
        expect_status(await client.post("/v1/credits/add", json=body), 401)
        expect_status(
            await client.post("/v1/credits/add", json=body, headers={"X-API-Key": "wrong-key"}), 401
        )


@check("auth", "strict", "the admin key is not accepted as a Bearer token")
async def admin_key_as_bearer(target: Target) -> None:
    body = {"userId": target.user_id("admin-bearer"), "amount": 1}
    async with target.client() as client:
        response = await client.post(
            "/v1/credits/add",
            json=body,
            headers={"Authorization": f"Bearer {target.admin()['X-API-Key']}"},
        )
        expect_status(response, 401)
