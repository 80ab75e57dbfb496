"""Every way a token can be wrong is a 401 (403 for a valid token lacking scope), never a 500."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from litestar.testing import TestClient

from engine.domain.tokens import TokenAuthority
from tests.conftest import ADMIN, JWT_SECRET, make_settings


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": "ann",
        "scope": "ttt:transcribe",
        "iat": now,
        "exp": now + 900,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _hs256(secret: str = JWT_SECRET, **changes: object) -> str:
    return jwt.encode(_claims(**changes), secret, algorithm="HS256")


NOW = int(time.time())
BAD_TOKENS = {
    "alg none": _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims()) + ".",
    "HS512": jwt.encode(_claims(), JWT_SECRET, algorithm="HS512"),
    "wrong secret": _hs256("another-secret-another-secret-xx"),
    "expired": _hs256(exp=NOW - 3600),
    "missing exp": _hs256(exp=None),
    "missing sub": _hs256(sub=None),
    "numeric sub": _hs256(sub=12345),
    "future nbf": _hs256(nbf=NOW + 3600),
    "foreign audience": _hs256(aud="someone-else"),
    "garbage": "not.a.jwt",
    "empty segments": "..",
    "vended claims forged with the user secret": _hs256(token_use="vended", jti="x"),
}


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
def test_bad_user_tokens_are_401(api: TestClient, name: str) -> None:
    response = api.get(
        "/v1/credits/balance", headers={"Authorization": f"Bearer {BAD_TOKENS[name]}"}
    )
    assert response.status_code == 401, response.text
    assert response.json()["ok"] is False


def test_rs256_confusion_is_401(api: TestClient) -> None:
    header = _b64({"alg": "RS256", "typ": "JWT"})
    token = f"{header}.{_b64(_claims())}.c2lnbmF0dXJl"
    assert (
        api.get("/v1/credits/balance", headers={"Authorization": f"Bearer {token}"}).status_code
        == 401
    )


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "Basic abc", "bearer", "Token x"])
def test_missing_or_malformed_authorization_is_401(api: TestClient, header: str) -> None:
    headers = {"Authorization": header} if header else {}
    response = api.get("/v1/credits/balance", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_real_apps_tokens_are_accepted(api: TestClient) -> None:
    era_c = _hs256(aud="pluct-business-engine")
    era_a = _hs256(iat=NOW + 20150, exp=NOW + 20150 + 900)
    for token in (era_c, era_a):
        response = api.get("/v1/credits/balance", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text


def test_expired_token_says_so(api: TestClient) -> None:
    response = api.get(
        "/v1/credits/balance", headers={"Authorization": f"Bearer {BAD_TOKENS['expired']}"}
    )
    assert response.json()["code"] == "token_expired"


def test_vended_token_is_not_a_user_token(api: TestClient) -> None:
    api.post("/v1/credits/add", json={"userId": "ann", "amount": 1}, headers=ADMIN)
    vended = api.post("/v1/vend-token", headers={"Authorization": f"Bearer {_hs256()}"}).json()[
        "token"
    ]
    response = api.get("/v1/credits/balance", headers={"Authorization": f"Bearer {vended}"})
    assert response.status_code == 401


def test_vended_tokens_are_unique_and_signed_with_another_key() -> None:
    authority = TokenAuthority(make_settings("sqlite:///unused.db"))
    first = authority.mint_vended("ann", time.time())
    second = authority.mint_vended("ann", time.time())
    assert first.token != second.token and first.jti != second.jti
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(first.token, JWT_SECRET, algorithms=["HS256"], options={"verify_aud": False})
    assert authority.verify_vended(first.token).jti == first.jti


def test_vended_token_is_exactly_what_pyjwt_would_mint() -> None:
    """The hot-path signer prepares the key once; its output must not drift from PyJWS."""
    settings = make_settings("sqlite:///unused.db")
    minted = TokenAuthority(settings).mint_vended("ann", time.time())
    payload = base64.urlsafe_b64decode(minted.token.split(".")[1] + "==")
    expected = jwt.PyJWS().encode(
        payload, settings.vend_secret.encode(), algorithm="HS256", headers={"kid": "vend"}
    )
    assert minted.token == expected
    assert jwt.get_unverified_header(minted.token) == {"alg": "HS256", "kid": "vend", "typ": "JWT"}


def test_a_vended_token_is_signed_again_from_its_claims_byte_for_byte() -> None:
    """What a replayed vend relies on: the receipt keeps jti, iat and exp, never the token."""
    authority = TokenAuthority(make_settings("sqlite:///unused.db"))
    minted = authority.mint_vended("ann", time.time())
    again = authority.vended_token("ann", minted.jti, minted.issued_at, minted.expires_at)
    assert again == minted.token
    assert authority.verify_vended(again).jti == minted.jti
