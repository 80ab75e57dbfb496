"""Issue 17's odd inputs: each a 4xx in the one envelope, never a 500 and never a silent accept."""

from __future__ import annotations

import time

import jwt
import pytest
from litestar.testing import TestClient

from engine.domain import tokens
from engine.domain.tokens import MAX_TOKEN_BYTES, VERIFIED_CACHE_BYTES, TokenAuthority
from engine.errors import Unauthorized
from tests.conftest import ADMIN, JWT_SECRET, bearer, make_settings

NOW = int(time.time())


def _token(**claims: object) -> str:
    body: dict[str, object] = {
        "sub": "ann",
        "scope": "ttt:transcribe",
        "iat": NOW,
        "exp": NOW + 900,
    }
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, JWT_SECRET, "HS256")


def _balance(api: TestClient, token: str) -> tuple[int, str]:
    response = api.get("/v1/credits/balance", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json().get("code", "")


# -- NumericDates ----------------------------------------------------------------------------
NUMERIC_DATES = {
    "exp 10**400": {"exp": 10**400},
    "exp as a string": {"exp": str(NOW + 900)},
    "exp as a float": {"exp": NOW + 900.5},
    "exp true": {"exp": True},
    "exp negative huge": {"exp": -(10**30)},
    "iat 10**400": {"iat": 10**400},
    "iat as a string": {"iat": str(NOW)},
    "nbf 10**400": {"nbf": 10**400},
    "nbf as a string": {"nbf": str(NOW)},
}


@pytest.mark.parametrize("name", sorted(NUMERIC_DATES))
def test_only_integer_numeric_dates_in_range(api: TestClient, name: str) -> None:
    assert _balance(api, _token(**NUMERIC_DATES[name])) == (401, "invalid_token")


def test_integer_numeric_dates_still_pass(api: TestClient) -> None:
    assert _balance(api, _token(nbf=NOW - 10))[0] == 200
    assert _balance(api, _token(iat=NOW + 20150, exp=NOW + 21050))[0] == 200


# -- token size and the verified-token cache -------------------------------------------------
def test_a_token_over_8_kib_is_refused_before_decoding(api: TestClient) -> None:
    huge = _token(pad="x" * (MAX_TOKEN_BYTES + 1))
    assert _balance(api, huge) == (401, "invalid_token")


def test_an_oversized_token_is_never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    authority = TokenAuthority(make_settings("sqlite:///unused.db"))

    def no_decoding(*_: object, **__: object) -> None:
        raise AssertionError("decoded an oversized token")

    monkeypatch.setattr(authority, "_decode", no_decoding)
    monkeypatch.setattr(jwt, "get_unverified_header", no_decoding)
    token = "a" * (MAX_TOKEN_BYTES + 1)
    for verify in (authority.verify_user, authority.verify_vended, authority.verify_either):
        with pytest.raises(Unauthorized):
            verify(token)


def test_the_verified_token_cache_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert VERIFIED_CACHE_BYTES <= 16 * 1024 * 1024
    bound = 64 * MAX_TOKEN_BYTES  # the shipped bound, scaled down so the test runs fast
    monkeypatch.setattr(tokens, "VERIFIED_CACHE_BYTES", bound)
    authority = TokenAuthority(make_settings("sqlite:///unused.db"))
    pad = "x" * (MAX_TOKEN_BYTES * 3 // 4 - 300)  # base64url makes 4 bytes of 3
    for index in range(3 * bound // MAX_TOKEN_BYTES):
        authority.verify_user(_token(sub=f"u{index}", pad=pad))
        assert 0 < authority.cached_bytes <= bound


# -- integer query parameters ----------------------------------------------------------------
@pytest.mark.parametrize("value", ["%C2%B2", "%D9%A3", "%EF%BC%93", "1%0A", "+5", "-1", "1e3", ""])
@pytest.mark.parametrize("name", ["limit", "after"])
def test_integer_query_parameters_take_ascii_digits_only(
    api: TestClient, name: str, value: str
) -> None:
    response = api.get(f"/v1/admin/audit?userId=ann&{name}={value}", headers=ADMIN)
    assert response.status_code == 400, response.text
    assert response.json()["details"]["parameter"] == name


# -- identifiers -----------------------------------------------------------------------------
BAD_IDS = ["carol\n", "carol\r\n", "ca rol", "carol|x", "", "x" * 129, "caról"]


@pytest.mark.parametrize("user_id", BAD_IDS)
def test_a_bad_user_id_in_a_body_is_400(api: TestClient, user_id: str) -> None:
    response = api.post("/v1/credits/add", json={"userId": user_id, "amount": 1}, headers=ADMIN)
    assert response.status_code == 400, response.text
    refund = api.post(
        "/v1/credits/refund", json={"userId": user_id, "requestId": "req_1"}, headers=ADMIN
    )
    assert refund.status_code == 400, refund.text


@pytest.mark.parametrize("user_id", BAD_IDS)
def test_a_bad_user_id_in_the_audit_query_is_400(api: TestClient, user_id: str) -> None:
    response = api.get("/v1/admin/audit", params={"userId": user_id}, headers=ADMIN)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("user_id", [i for i in BAD_IDS if i])
def test_a_bad_subject_is_401(api: TestClient, user_id: str) -> None:
    assert _balance(api, _token(sub=user_id)) == (401, "invalid_token")


@pytest.mark.parametrize("request_id", ["req_1\n", "req 1", "r" * 129, ""])
def test_a_bad_request_id_is_400(api: TestClient, request_id: str) -> None:
    response = api.post(
        "/v1/credits/refund", json={"userId": "ann", "requestId": request_id}, headers=ADMIN
    )
    assert response.status_code == 400, response.text


def test_a_bad_user_id_in_the_vend_body_is_400(api: TestClient) -> None:
    response = api.post("/v1/vend-token", json={"userId": "ann\n"}, headers=bearer("ann"))
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    "user_id", ["mobile-3f9a0c1d2e4b5a67", "mobile-error-fallback", "a", "x" * 128, "a.b:c@d_e-f"]
)
def test_the_apps_ids_still_pass(api: TestClient, user_id: str) -> None:
    granted = api.post("/v1/credits/add", json={"userId": user_id, "amount": 1}, headers=ADMIN)
    assert granted.status_code == 200, granted.text
    balance = api.get("/v1/credits/balance", headers=bearer(user_id))
    assert balance.status_code == 200 and balance.json()["balance"] == 1
    audit = api.get("/v1/admin/audit", params={"userId": user_id}, headers=ADMIN)
    assert audit.status_code == 200 and len(audit.json()["entries"]) == 1
