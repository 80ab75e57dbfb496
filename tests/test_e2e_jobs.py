"""The app's journey past the submit (issues 17 and 18): the poll route, kept results, lost
jobs, failed-job refunds, refund-revoked tokens and the signed webhook, against a real server
with 2 workers and the simulator."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engine.local import LocalEngine
from engine.upstream.sim_state import Faults, Stats
from tests.e2e import audit_trail, balance_of, grant, recorded_client
from tests.spec_check import SpecRecorder

pytestmark = pytest.mark.server
VIDEO = "https://www.tiktok.com/@creator/video/7300000000000000101"
FAILING = "https://www.tiktok.com/@fail/video/7300000000000000102"


@pytest.fixture(scope="module")
def shared_engine() -> Iterator[LocalEngine]:
    # Grace 0: the first "no such job" from upstream still answers the last known state, the
    # next one the lost job's failure.
    with LocalEngine(
        workers=2, rate_limit_per_minute=0, env={"JOB_LOST_GRACE_SECONDS": "0"}
    ) as engine:
        yield engine


@pytest.fixture
def engine(shared_engine: LocalEngine) -> LocalEngine:
    shared_engine.simulator.app.faults = Faults()
    shared_engine.simulator.app.stats = Stats()
    return shared_engine


def _vend(engine: LocalEngine, user: str) -> tuple[dict[str, str], str]:
    response = engine.client.post("/v1/vend-token", headers=engine.user_headers(user))
    assert response.status_code == 200, response.text
    body = response.json()
    return {"Authorization": f"Bearer {body['token']}"}, str(body["requestId"])


def _submit(client: httpx.Client, engine: LocalEngine, user: str, url: str = VIDEO) -> str:
    service, _ = _vend(engine, user)
    submitted = client.post("/ttt/transcribe", json={"url": url}, headers=service)
    assert submitted.status_code == 202, submitted.text
    return str(submitted.json()["jobId"])


@pytest.fixture
def client(engine: LocalEngine, spec_recorder: SpecRecorder) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=engine.url, timeout=30, event_hooks={"response": [spec_recorder.sync_hook()]}
    ) as checked:
        yield checked


def test_latest_journey_polls_with_the_user_token_and_keeps_the_result(
    engine: LocalEngine, client: httpx.Client
) -> None:
    grant(engine, "poll-ann", 1)
    job_id = _submit(client, engine, "poll-ann")
    assert engine.simulator.app.stats.last_headers["x-request-id"] == job_id  # ours, not theirs
    user = engine.user_headers("poll-ann")
    seen = []
    for _ in range(10):
        polled = client.get(f"/ttt/poll/{job_id}", headers=user)
        assert polled.status_code == 200, polled.text
        seen.append(polled.json()["progress"])
        if polled.json()["status"] == "completed":
            break
    final = polled.json()
    assert seen == [15, 35, 75, 100] and final["result"]["transcription"]
    assert final["pollUrl"] == f"/ttt/poll/{job_id}" and "statusPollUrl" not in final
    other = client.get(f"/ttt/poll/{job_id}", headers=engine.user_headers("poll-eve"))
    assert (other.status_code, other.json()["code"]) == (404, "job_not_found")
    calls = engine.simulator.app.stats.status_calls
    engine.simulator.app.jobs.clear()  # upstream restarts: its jobs lived in memory
    kept = client.get(f"/ttt/status/{job_id}", headers=user)
    assert kept.json() == final  # from the store, byte for byte the same body
    assert engine.simulator.app.stats.status_calls == calls


def test_a_lost_job_answers_its_last_state_then_fails_and_is_refunded(
    engine: LocalEngine, client: httpx.Client
) -> None:
    grant(engine, "lost-bo", 1)
    job_id = _submit(client, engine, "lost-bo")
    user = engine.user_headers("lost-bo")
    assert client.get(f"/ttt/poll/{job_id}", headers=user).json()["progress"] == 15
    engine.simulator.app.jobs.clear()
    last_known = client.get(f"/ttt/poll/{job_id}", headers=user)
    assert (last_known.status_code, last_known.json()["status"]) == (200, "processing")
    lost = client.get(f"/ttt/poll/{job_id}", headers=user).json()
    assert (lost["status"], lost["error"], lost["creditsRefunded"]) == (
        "failed",
        "upstream_lost_job",
        1,
    )
    assert balance_of(engine, "lost-bo") == 1


@pytest.fixture(params=["sqlite", "redis"])
def any_store_engine(request: pytest.FixtureRequest, engine: LocalEngine) -> Iterator[LocalEngine]:
    """The shared SQLite engine, or a Redis one (both with 2 workers)."""
    if request.param == "sqlite":
        yield engine
        return
    with LocalEngine(redis=True, workers=2, rate_limit_per_minute=0) as redis_engine:
        yield redis_engine


async def test_a_failed_job_is_refunded_once_under_concurrent_polls(
    any_store_engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    engine = any_store_engine
    client = engine.client
    grant(engine, "fail-cy", 1)
    job_id = _submit(client, engine, "fail-cy", FAILING)
    user = engine.user_headers("fail-cy")
    async with recorded_client(engine, spec_recorder, connections=40) as concurrent:
        for _ in range(2):  # the simulator fails a /@fail job on its third poll
            early = await concurrent.get(f"/ttt/status/{job_id}", headers=user)
            assert early.status_code == 200
        polls = await asyncio.gather(
            *(concurrent.get(f"/ttt/poll/{job_id}", headers=user) for _ in range(40))
        )
    bodies = [p.json() for p in polls]
    assert {(b["status"], b["creditsRefunded"]) for b in bodies} == {("failed", 1)}
    assert all(isinstance(b["error"], str) and b["error"] for b in bodies)
    trail = [e["action"] for e in audit_trail(engine, "fail-cy")]
    assert trail == ["grant", "vend", "refund"]
    assert balance_of(engine, "fail-cy") == 1
    verify = engine.ledger_verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_refund_revokes_the_token_and_a_used_token_is_not_refundable(
    engine: LocalEngine, client: httpx.Client
) -> None:
    grant(engine, "ref-dee", 2)
    unused, unused_vend = _vend(engine, "ref-dee")
    refund = client.post(
        "/v1/credits/refund",
        json={"userId": "ref-dee", "requestId": unused_vend},
        headers=engine.admin_headers,
    )
    assert refund.status_code == 200, refund.text
    revoked = client.post("/ttt/transcribe", json={"url": VIDEO}, headers=unused)
    assert (revoked.status_code, revoked.json()["code"]) == (401, "token_refunded")
    used, used_vend = _vend(engine, "ref-dee")
    assert client.post("/ttt/transcribe", json={"url": VIDEO}, headers=used).status_code == 202
    refused = client.post(
        "/v1/credits/refund",
        json={"userId": "ref-dee", "requestId": used_vend},
        headers=engine.admin_headers,
    )
    assert (refused.status_code, refused.json()["code"]) == (409, "token_used")
    assert balance_of(engine, "ref-dee") == 1
    assert engine.simulator.app.stats.jobs_created == 1


# -- the webhook, signed by an implementation of §8.3 written for these tests -------------
def _delivery(
    secret: str,
    job_id: str,
    request_id: str,
    status: str,
    timestamp: str = "2026-12-03T12:00:00.000Z",
    **extra: Any,
) -> bytes:
    key = hashlib.sha256(f"{job_id}-{status}-{timestamp}".encode()).hexdigest()
    usage = {
        "audioDurationSeconds": 12.5,
        "transcriptCharacters": 0,
        "modelUsed": "openai-whisper-base",
        "processingTimeSeconds": 3,
    }
    signed = {
        "jobId": job_id,
        "requestId": request_id,
        "status": status,
        "usage": usage,
        "timestamp": timestamp,
        "idempotencyKey": key,
    }
    text = json.dumps(signed, separators=(",", ":"), ensure_ascii=False)
    signature = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    body = {
        "jobId": job_id,
        "requestId": request_id,
        "status": status,
        "usage": usage,
        **extra,
        "timestamp": timestamp,
        "idempotencyKey": key,
        "signature": signature,
    }
    return json.dumps(body, ensure_ascii=False).encode()


def _post_webhook(client: httpx.Client, body: bytes) -> httpx.Response:
    signature = json.loads(body).get("signature", "") if body.startswith(b"{") else ""
    return client.post(
        "/webhooks/tttranscribe",
        content=body,
        headers={"Content-Type": "application/json", "X-TTTranscribe-Signature": signature},
    )


def test_a_signed_failure_webhook_is_recorded_before_any_poll_and_only_once(
    engine: LocalEngine, client: httpx.Client
) -> None:
    grant(engine, "hook-eve", 1)
    job_id = _submit(client, engine, "hook-eve")
    upstream_id = list(engine.simulator.app.jobs)[-1]
    secret = engine.settings.ttt_secret
    body = _delivery(secret, upstream_id, job_id, "failed", error="Transcription error: boom")
    received = _post_webhook(client, body)
    assert (received.status_code, received.json()) == (200, {"received": True})
    replay = _post_webhook(client, body)
    assert (replay.status_code, replay.json()["code"]) == (409, "already_processed")
    forged = _post_webhook(client, _delivery("not-the-secret", upstream_id, job_id, "failed"))
    assert (forged.status_code, forged.json()["code"]) == (401, "invalid_signature")
    unsigned = client.post("/webhooks/tttranscribe", content=body)
    assert unsigned.status_code == 401
    unknown = _post_webhook(
        client, _delivery(secret, upstream_id, "job_nobody", "failed", "2026-12-03T12:00:01Z")
    )
    assert (unknown.status_code, unknown.json()["code"]) == (404, "request_not_found")
    huge = _post_webhook(client, _delivery(secret, upstream_id, job_id, "failed", pad="x" * 70000))
    assert huge.status_code == 413
    polled = client.get(f"/ttt/poll/{job_id}", headers=engine.user_headers("hook-eve")).json()
    assert (polled["status"], polled["error"], polled["creditsRefunded"]) == (
        "failed",
        "Transcription error: boom",
        1,
    )
    assert engine.simulator.app.stats.status_calls == 0  # recorded by the webhook, not a poll
    assert balance_of(engine, "hook-eve") == 1


def test_a_completed_webhook_fetches_the_result_once(
    engine: LocalEngine, client: httpx.Client
) -> None:
    grant(engine, "hook-fin", 1)
    job_id = _submit(client, engine, "hook-fin")
    upstream_id = list(engine.simulator.app.jobs)[-1]
    engine.simulator.app.jobs[upstream_id].polls = 3  # the next status is its completion
    body = _delivery(engine.settings.ttt_secret, upstream_id, job_id, "completed", cacheHit=False)
    assert _post_webhook(client, body).status_code == 200
    engine.simulator.app.jobs.clear()
    polled = client.get(f"/ttt/poll/{job_id}", headers=engine.user_headers("hook-fin")).json()
    assert polled["status"] == "completed" and polled["result"]["transcription"]
