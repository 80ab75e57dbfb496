"""Credits over HTTP (in-process app, real SQLite file); every response checked against the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.testing import TestClient

from engine import create_app
from engine.local import RedisServer
from tests.conftest import ADMIN, bearer, make_settings
from tests.spec_check import SpecRecorder


def grant(api: TestClient, user: str, amount: int, **extra: object):  # type: ignore[no-untyped-def]
    response = api.post(
        "/v1/credits/add", json={"userId": user, "amount": amount, **extra}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    return response


def test_health_reports_uptime_version_and_store(api: TestClient) -> None:
    body = api.get("/health").json()
    assert body["status"] == "ok" and body["store"] == {
        **body["store"],
        "backend": "sqlite",
        "reachable": True,
    }
    assert 0 <= body["uptimeSeconds"] < 3600
    assert body["version"] == "1.0.0"


def test_new_account_reads_zero_without_being_created(api: TestClient) -> None:
    body = api.get("/v1/credits/balance", headers=bearer("nobody")).json()
    assert body == {
        "ok": True,
        "userId": "nobody",
        "balance": 0,
        "main": 0,
        "bonus": 0,
        "updatedAt": "1970-01-01T00:00:00.000Z",
    }
    audit = api.get("/v1/admin/audit", params={"userId": "nobody"}, headers=ADMIN).json()
    assert audit["entries"] == []


def test_grant_returns_the_new_balance_and_moves_updated_at(api: TestClient) -> None:
    body = grant(api, "ann", 5, reason="welcome").json()
    assert body["newBalance"] == body["balanceAfter"] == 5 and body["reason"] == "welcome"
    balance = api.get("/v1/credits/balance", headers=bearer("ann")).json()
    assert balance["balance"] == balance["main"] == 5
    assert balance["updatedAt"] == body["timestamp"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"userId": "ann", "amount": 2.5}, "invalid_request"),
        ({"userId": "ann", "amount": "5"}, "invalid_body"),
        ({"userId": "ann", "amount": True}, "invalid_body"),
        ({"userId": "ann", "amount": 0}, "invalid_request"),
        ({"userId": "ann", "amount": -3}, "invalid_request"),
        ({"userId": "ann", "amount": 10**7}, "invalid_request"),
        ({"userId": "ann", "amount": 10**30}, "invalid_request"),
        ({"amount": 1}, "invalid_body"),
        ({"userId": "", "amount": 1}, "invalid_body"),
        ({"userId": "a/b", "amount": 1}, "invalid_body"),
        ({"userId": "x" * 200, "amount": 1}, "invalid_body"),
        ([1, 2], "invalid_body"),
    ],
)
def test_bad_grants_get_a_clear_400(api: TestClient, payload: object, code: str) -> None:
    response = api.post("/v1/credits/add", json=payload, headers=ADMIN)
    assert response.status_code == 400
    assert response.json()["code"] == code


def test_an_integral_float_is_a_whole_amount(api: TestClient) -> None:
    assert grant(api, "ann", 5.0).json()["amount"] == 5  # type: ignore[arg-type]


def test_malformed_and_oversized_bodies(api: TestClient) -> None:
    malformed = api.post("/v1/credits/add", content=b'{"userId": "a", ', headers=ADMIN)
    assert (malformed.status_code, malformed.json()["code"]) == (400, "malformed_json")
    huge = api.post("/v1/credits/add", content=b"[" + b"1," * 50_000 + b"1]", headers=ADMIN)
    assert (huge.status_code, huge.json()["code"]) == (413, "payload_too_large")
    unicode = api.post("/v1/credits/add", json={"userId": "ünï", "amount": 1}, headers=ADMIN)
    assert unicode.status_code == 400


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"Authorization": f"Bearer {ADMIN['X-API-Key']}"},
        {"X-API-Key": ""},
    ],
)
def test_admin_key_is_required_and_never_a_bearer(api: TestClient, headers: dict[str, str]) -> None:
    response = api.post("/v1/credits/add", json={"userId": "ann", "amount": 1}, headers=headers)
    assert response.status_code == 401
    assert "www-authenticate" in response.headers


def test_grant_idempotency(api: TestClient) -> None:
    first = grant(api, "ann", 3, clientRequestId="grant-1")
    again = grant(api, "ann", 3, clientRequestId="grant-1")
    assert (
        again.headers["idempotent-replayed"] == "true"
        and "idempotent-replayed" not in first.headers
    )
    assert again.json() == first.json()
    changed = api.post(
        "/v1/credits/add",
        json={"userId": "ann", "amount": 4, "clientRequestId": "grant-1"},
        headers=ADMIN,
    )
    assert (changed.status_code, changed.json()["code"]) == (422, "idempotency_key_reused")
    header_key = {**ADMIN, "X-Client-Request-Id": "hdr-1"}
    for _ in range(2):
        api.post("/v1/credits/add", json={"userId": "ann", "amount": 1}, headers=header_key)
    assert api.get("/v1/credits/balance", headers=bearer("ann")).json()["balance"] == 4


def test_vend_spends_one_credit_and_answers_both_shapes(api: TestClient) -> None:
    grant(api, "ann", 2)
    response = api.post(
        "/v1/vend-token", json={"userId": "ann", "clientRequestId": "v-1"}, headers=bearer("ann")
    )
    body = response.json()
    assert response.status_code == 200
    assert body["expiresIn"] == 900 and body["balanceAfter"] == 1
    assert body["token"] == body["serviceToken"] and body["scope"] == "ttt:transcribe"
    assert body["requestId"].startswith("req_") and body["clientRequestId"] == "v-1"
    assert response.headers["ratelimit-policy"] == '"per-user";q=100;w=60'


def test_vend_at_zero_is_402_with_one_refusal_entry(api: TestClient) -> None:
    response = api.post("/v1/vend-token", headers=bearer("broke"))
    body = response.json()
    assert response.status_code == 402
    assert body["code"] == "insufficient_credits" and body["error"] == "INSUFFICIENT_CREDITS"
    assert body["balance"] == 0 and body["details"] == {"balance": 0, "required": 1}
    entries = api.get("/v1/admin/audit", params={"userId": "broke"}, headers=ADMIN).json()[
        "entries"
    ]
    assert [(e["action"], e["delta"]) for e in entries] == [("vend_refused", 0)]


def test_vend_replay_returns_the_same_token_and_charges_once(api: TestClient) -> None:
    grant(api, "ann", 5)
    first = api.post("/v1/vend-token", json={"clientRequestId": "same"}, headers=bearer("ann"))
    second = api.post("/v1/vend-token", json={"clientRequestId": "same"}, headers=bearer("ann"))
    assert second.headers["idempotent-replayed"] == "true"
    # The store keeps the token's claims, not the token: the replay signs it again, byte for byte.
    same = ("token", "serviceToken", "expiresAt", "requestId", "balanceAfter", "clientRequestId")
    assert {k: second.json()[k] for k in same} == {k: first.json()[k] for k in same}
    assert api.get("/v1/credits/balance", headers=bearer("ann")).json()["balance"] == 4


def test_body_key_wins_over_the_per_attempt_header(api: TestClient) -> None:
    grant(api, "ann", 5)
    tokens = {
        api.post(
            "/v1/vend-token",
            json={"clientRequestId": "stable"},
            headers={**bearer("ann"), "X-Client-Request-Id": f"attempt-{i}"},
        ).json()["token"]
        for i in range(3)
    }
    assert len(tokens) == 1


def test_another_users_key_returns_nothing_of_theirs(api: TestClient) -> None:
    grant(api, "ann", 1)
    ann = api.post("/v1/vend-token", json={"clientRequestId": "k"}, headers=bearer("ann")).json()
    bob = api.post("/v1/vend-token", json={"clientRequestId": "k"}, headers=bearer("bob"))
    assert bob.status_code == 402
    assert ann["token"] not in bob.text


def test_vend_needs_the_scope_and_the_callers_own_user_id(api: TestClient) -> None:
    grant(api, "ann", 1)
    no_scope = api.post("/v1/vend-token", headers=bearer("ann", scope="profile"))
    assert (no_scope.status_code, no_scope.json()["code"]) == (403, "insufficient_scope")
    other = api.post("/v1/vend-token", json={"userId": "bob"}, headers=bearer("ann"))
    assert (other.status_code, other.json()["code"]) == (403, "user_mismatch")
    bad_key = api.post(
        "/v1/vend-token", json={"clientRequestId": "has space"}, headers=bearer("ann")
    )
    assert bad_key.status_code == 400
    assert api.get("/v1/credits/balance", headers=bearer("ann")).json()["balance"] == 1


def test_refund_once_by_request_id(api: TestClient) -> None:
    grant(api, "ann", 1)
    vend = api.post("/v1/vend-token", headers=bearer("ann")).json()
    body = {"userId": "ann", "requestId": vend["requestId"], "reason": "upstream lost the job"}
    refunded = api.post("/v1/credits/refund", json=body, headers=ADMIN)
    assert refunded.status_code == 200 and refunded.json()["balanceAfter"] == 1
    again = api.post("/v1/credits/refund", json=body, headers=ADMIN)
    assert (again.status_code, again.json()["code"]) == (409, "already_refunded")
    unknown = api.post("/v1/credits/refund", json={**body, "requestId": "req_x"}, headers=ADMIN)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "vend_not_found")


def test_audit_trail_pages_and_records_context(api: TestClient) -> None:
    grant(api, "ann", 3)
    for _ in range(4):
        api.post("/v1/vend-token", headers={**bearer("ann"), "User-Agent": "PluctMobile/1.0.3"})
    first = api.get("/v1/admin/audit", params={"userId": "ann", "limit": 2}, headers=ADMIN).json()
    rest = api.get(
        "/v1/admin/audit", params={"userId": "ann", "after": first["nextAfter"]}, headers=ADMIN
    ).json()
    actions = [e["action"] for e in first["entries"] + rest["entries"]]
    assert actions == ["grant", "vend", "vend", "vend", "vend_refused"]
    assert rest["entries"][-1]["userAgent"] == "PluctMobile/1.0.3"
    bad = api.get("/v1/admin/audit", params={"userId": "ann", "limit": "lots"}, headers=ADMIN)
    assert bad.status_code == 400
    assert api.get("/v1/admin/audit", headers=ADMIN).status_code == 400


def test_unknown_route_and_wrong_method(api: TestClient) -> None:
    missing = api.get("/v1/quote")
    assert (missing.status_code, missing.json()["code"]) == (404, "route_not_found")
    wrong = api.post("/health")
    assert (wrong.status_code, wrong.json()["code"]) == (405, "method_not_allowed")
    assert "GET" in wrong.headers["allow"]


def test_rate_limit_headers_and_429(tmp_path: Path, spec_recorder: SpecRecorder) -> None:
    settings = make_settings(f"sqlite:///{tmp_path}/rl.db", rate_limit_per_minute=3)
    with TestClient(create_app(settings)) as client:
        client.event_hooks = {"request": [], "response": [spec_recorder.sync_hook()]}
        statuses = [
            client.get("/v1/credits/balance", headers=bearer("ann")).status_code for _ in range(3)
        ]
        limited = client.post("/v1/vend-token", headers=bearer("ann"))
        entries = client.get("/v1/admin/audit", params={"userId": "ann"}, headers=ADMIN).json()
    assert statuses == [200, 200, 200]
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["retryAfterSeconds"] == int(limited.headers["retry-after"])
    assert [e["action"] for e in entries["entries"]] == ["vend_rate_limited"]


def test_refused_meta_urls_do_not_use_up_the_rate_limit(
    tmp_path: Path, spec_recorder: SpecRecorder
) -> None:
    settings = make_settings(f"sqlite:///{tmp_path}/rl.db", rate_limit_per_minute=2)
    with TestClient(create_app(settings)) as client:
        client.event_hooks = {"request": [], "response": [spec_recorder.sync_hook()]}
        refused = [
            client.get("/meta", params={"url": f"https://example.com/{i}"}) for i in range(5)
        ]
    assert {(r.status_code, r.json()["code"]) for r in refused} == {(422, "invalid_url")}


async def test_store_down_is_503_with_nothing_written(spec_recorder: SpecRecorder) -> None:
    with RedisServer() as redis_server:
        settings = make_settings(redis_server.url)
        with TestClient(create_app(settings)) as client:
            client.event_hooks = {"request": [], "response": [spec_recorder.sync_hook()]}
            assert (
                client.post(
                    "/v1/credits/add", json={"userId": "ann", "amount": 1}, headers=ADMIN
                ).status_code
                == 200
            )
            redis_server.stop()
            down = client.post("/v1/vend-token", headers=bearer("ann"))
            health = client.get("/health")
            redis_server.start()
            balance = client.get("/v1/credits/balance", headers=bearer("ann"))
    assert (down.status_code, down.json()["code"]) == (503, "store_unavailable")
    assert health.status_code == 503 and health.json()["store"]["reachable"] is False
    assert balance.status_code in (200, 503)
