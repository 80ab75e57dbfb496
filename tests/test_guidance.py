"""Issue 20: every 401 and 403 tells the caller the header that works on that route.

Admin routes take the key in `X-API-Key`; user routes `Authorization: Bearer <user JWT>`;
`/ttt/transcribe` the vended token; `/metrics` the metrics token.  Each case is a real
refusal from the app, checked against the spec like every other response.
"""

from __future__ import annotations

import time

import pytest
from litestar.testing import TestClient

from engine import Settings, create_app
from engine.domain.tokens import TokenAuthority
from tests.conftest import ADMIN, ADMIN_KEY, bearer

URL = "https://www.tiktok.com/@creator/video/7300000000000000001"
ADMIN_HEADER = "`X-API-Key`"
USER_HEADER = "`Authorization: Bearer <user JWT>`"
VENDED_HEADER = "`Authorization: Bearer <vended token>`"
EITHER_HEADER = "`Authorization: Bearer <vended token or user JWT>`"

ADMIN_CALLS = [
    ("POST", "/v1/credits/add", {"json": {"userId": "ann", "amount": 1}}),
    ("POST", "/v1/credits/refund", {"json": {"userId": "ann", "requestId": "req_x"}}),
    ("GET", "/v1/admin/audit", {"params": {"userId": "ann"}}),
    ("GET", "/v1/admin/balance", {"params": {"userId": "ann"}}),
]
WRONG_ADMIN_CREDENTIALS = {
    "none": {},
    "wrong key": {"X-API-Key": "not-the-key"},
    "the key as a Bearer": {"Authorization": f"Bearer {ADMIN_KEY}"},
}


def _refusal(response: object, status: int, header: str) -> None:
    body = response.json()  # type: ignore[attr-defined]
    assert response.status_code == status, body  # type: ignore[attr-defined]
    assert header in body["guidance"], body["guidance"]


@pytest.mark.parametrize(("method", "path", "kwargs"), ADMIN_CALLS)
@pytest.mark.parametrize("credentials", sorted(WRONG_ADMIN_CREDENTIALS))
def test_admin_routes_name_x_api_key(
    api: TestClient, method: str, path: str, kwargs: dict[str, object], credentials: str
) -> None:
    response = api.request(method, path, headers=WRONG_ADMIN_CREDENTIALS[credentials], **kwargs)
    _refusal(response, 401, ADMIN_HEADER)
    assert "Bearer" not in response.json()["guidance"].split("(")[0]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"},
        {"X-API-Key": ADMIN_KEY},
    ],
    ids=["none", "garbage", "basic", "admin key"],
)
@pytest.mark.parametrize("route", ["GET /v1/credits/balance", "POST /v1/vend-token"])
def test_user_routes_name_the_user_bearer(
    api: TestClient, route: str, headers: dict[str, str]
) -> None:
    method, path = route.split()
    _refusal(api.request(method, path, headers=headers), 401, USER_HEADER)


def test_a_vended_token_as_user_token_names_the_user_bearer(api: TestClient) -> None:
    api.post("/v1/credits/add", headers=ADMIN, json={"userId": "ann", "amount": 1})
    vended = api.post("/v1/vend-token", headers=bearer("ann"), json={}).json()["token"]
    response = api.get("/v1/credits/balance", headers={"Authorization": f"Bearer {vended}"})
    _refusal(response, 401, USER_HEADER)


def test_403s_name_the_user_bearer(api: TestClient) -> None:
    _refusal(api.post("/v1/vend-token", headers=bearer("ann", "other"), json={}), 403, USER_HEADER)
    mismatch = api.post("/v1/vend-token", headers=bearer("ann"), json={"userId": "bob"})
    _refusal(mismatch, 403, USER_HEADER)
    assert mismatch.json()["code"] == "user_mismatch"


def test_transcribe_names_the_vended_token(api: TestClient, settings: Settings) -> None:
    for headers in ({}, bearer("ann"), {"Authorization": "Bearer not.a.jwt"}):
        _refusal(
            api.post("/ttt/transcribe", headers=headers, json={"url": URL}), 401, VENDED_HEADER
        )
    expired = TokenAuthority(settings).vended_token("ann", "jti-old", 1, int(time.time()) - 3600)
    response = api.post(
        "/ttt/transcribe", headers={"Authorization": f"Bearer {expired}"}, json={"url": URL}
    )
    _refusal(response, 401, VENDED_HEADER)


def test_a_used_vended_token_names_the_vended_token(api: TestClient) -> None:
    api.post("/v1/credits/add", headers=ADMIN, json={"userId": "ann", "amount": 1})
    vended = api.post("/v1/vend-token", headers=bearer("ann"), json={}).json()["token"]
    auth = {"Authorization": f"Bearer {vended}"}
    assert api.post("/ttt/transcribe", headers=auth, json={"url": URL}).status_code == 202
    again = api.post("/ttt/transcribe", headers=auth, json={"url": URL + "2"})
    _refusal(again, 401, VENDED_HEADER)


@pytest.mark.parametrize("route", ["status", "poll"])
def test_status_and_poll_name_either_token(api: TestClient, route: str) -> None:
    for headers in ({}, {"Authorization": "Bearer not.a.jwt"}, {"X-API-Key": ADMIN_KEY}):
        _refusal(api.get(f"/ttt/{route}/job-1", headers=headers), 401, EITHER_HEADER)


def test_metrics_name_the_metrics_token(settings: Settings) -> None:
    app = create_app(settings.with_overrides(metrics_token="m-token"))
    with TestClient(app) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": ADMIN_KEY}):
            response = client.get("/metrics", headers=headers)
            _refusal(response, 401, "`Authorization: Bearer <METRICS_TOKEN>`")
        assert client.get("/metrics", headers={"Authorization": "Bearer m-token"}).is_success


def test_the_webhook_names_its_signature_header(api: TestClient) -> None:
    for headers in ({}, {"X-TTTranscribe-Signature": "00" * 32}):
        response = api.post(
            "/webhooks/tttranscribe",
            headers=headers,
            json={"jobId": "j", "status": "completed", "timestamp": "2026-01-01T00:00:00Z"},
        )
        _refusal(response, 401, "`X-TTTranscribe-Signature`")
