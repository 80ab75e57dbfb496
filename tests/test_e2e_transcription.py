"""One credit buys exactly one transcription: against a real server and the simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from engine.local import LocalEngine
from engine.upstream.sim_state import Faults, Stats
from tests.e2e import balance_of, grant, recorded_client, statuses
from tests.spec_check import SpecRecorder

pytestmark = pytest.mark.server
VIDEO = "https://www.tiktok.com/@creator/video/7300000000000000001"


@pytest.fixture(scope="module")
def shared_engine() -> Iterator[LocalEngine]:
    with LocalEngine(
        rate_limit_per_minute=0,
        env={"BREAKER_COOLDOWN_SECONDS": "1", "BREAKER_FAILURE_THRESHOLD": "3"},
    ) as engine:
        yield engine


@pytest.fixture
def engine(shared_engine: LocalEngine) -> LocalEngine:
    shared_engine.simulator.app.faults = Faults()
    shared_engine.simulator.app.stats = Stats()
    return shared_engine


def wait_out_cooldown(client: httpx.Client) -> None:
    """The breaker's cool-down is a timer by design (1 s here): poll its state, bounded."""
    deadline = time.monotonic() + 5
    while client.get("/health/services").json()["circuitBreaker"]["state"] == "open":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def vend(engine: LocalEngine, user: str) -> dict[str, str]:
    response = engine.client.post("/v1/vend-token", headers=engine.user_headers(user))
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def test_full_flow_add_vend_transcribe_poll(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    grant(engine, "ann", 1)
    service = vend(engine, "ann")
    with httpx.Client(
        base_url=engine.url, event_hooks={"response": [spec_recorder.sync_hook()]}
    ) as client:
        submitted = client.post(
            "/ttt/transcribe", json={"url": VIDEO, "clientRequestId": "t-1"}, headers=service
        )
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        assert job["jobId"].startswith("job_") and "id" not in job  # ours, not upstream's id
        assert job["url"] == VIDEO and job["status"] == "queued" and "updatedAt" in job
        assert (job["statusUrl"], job["pollUrl"]) == (
            f"/ttt/status/{job['jobId']}",
            f"/ttt/poll/{job['jobId']}",
        )
        assert job["estimatedProcessingTime"] == 300  # upstream field passed through unchanged
        seen = []
        for _ in range(10):
            status = client.get(f"/ttt/status/{job['jobId']}", headers=engine.user_headers("ann"))
            assert status.status_code == 200
            seen.append(status.json()["progress"])
            if status.json()["status"] == "completed":
                break
        final = status.json()
        assert seen == [15, 35, 75, 100]
        assert final["jobId"] == job["jobId"] and final["result"]["transcription"]
        assert client.get("/meta", params={"url": VIDEO}).json()["duration"] == 37
    assert engine.simulator.app.stats.jobs_created == 1
    assert engine.simulator.app.stats.last_headers["user-agent"].startswith("pluct-engine/")
    assert balance_of(engine, "ann") == 0


def test_token_reuse_and_user_tokens_are_refused(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    grant(engine, "bea", 1)
    service = vend(engine, "bea")
    with httpx.Client(
        base_url=engine.url, event_hooks={"response": [spec_recorder.sync_hook()]}
    ) as client:
        assert (
            client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service).status_code == 202
        )
        reused = client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service)
        user = client.post(
            "/ttt/transcribe", json={"url": VIDEO}, headers=engine.user_headers("bea")
        )
        replay = client.post(
            "/ttt/transcribe", json={"url": VIDEO, "clientRequestId": "x"}, headers=service
        )
    assert (reused.status_code, reused.json()["code"]) == (401, "token_used")
    assert (user.status_code, user.json()["code"]) == (401, "vended_token_required")
    assert replay.status_code == 401
    assert engine.simulator.app.stats.jobs_created == 1


async def test_50_concurrent_submissions_with_one_token_make_one_job(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    grant(engine, "cat", 1)
    service = vend(engine, "cat")
    async with recorded_client(engine, spec_recorder) as client:
        responses = await asyncio.gather(
            *(
                client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service)
                for _ in range(50)
            )
        )
    counts = statuses(responses)
    assert counts[202] == 1 and counts[202] + counts[409] + counts[401] == 50
    assert engine.simulator.app.stats.jobs_created == 1


async def test_same_key_fired_concurrently_returns_one_job(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    grant(engine, "cid", 1)
    service = vend(engine, "cid")
    async with recorded_client(engine, spec_recorder) as client:
        first = await client.post(
            "/ttt/transcribe", json={"url": VIDEO, "clientRequestId": "same"}, headers=service
        )
        replays = await asyncio.gather(
            *(
                client.post(
                    "/ttt/transcribe",
                    json={"url": VIDEO, "clientRequestId": "same"},
                    headers=service,
                )
                for _ in range(20)
            )
        )
    assert {r.json()["jobId"] for r in replays} == {first.json()["jobId"]}
    assert all(r.headers["idempotent-replayed"] == "true" for r in replays)
    assert engine.simulator.app.stats.transcribe_calls == 1


def test_upstream_5xx_then_retry_with_the_same_token_costs_nothing_more(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    grant(engine, "dan", 1)
    service = vend(engine, "dan")
    with httpx.Client(
        base_url=engine.url, event_hooks={"response": [spec_recorder.sync_hook()]}
    ) as client:
        codes = []
        for faults in (
            Faults(error_rate=1.0, error_status=500),
            Faults(reset=True),
            Faults(malformed=True),
            Faults(error_rate=1.0, error_status=503, html_errors=True),
        ):
            engine.simulator.app.faults = faults
            codes.append(
                client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service).status_code
            )
        assert codes == [502, 502, 502, 503]  # the third failure opened the breaker
        engine.simulator.app.faults = Faults()
        wait_out_cooldown(client)  # the breaker opened after the third failure
        ok = client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service)
    assert ok.status_code == 202, ok.text
    assert balance_of(engine, "dan") == 0
    trail = engine.client.get(
        "/v1/admin/audit", params={"userId": "dan"}, headers=engine.admin_headers
    )
    assert [e["action"] for e in trail.json()["entries"]] == ["grant", "vend"]


def test_upstream_4xx_keeps_status_and_releases_the_token(engine: LocalEngine) -> None:
    grant(engine, "eve", 1)
    service = vend(engine, "eve")
    engine.simulator.app.faults = Faults(rate_limited=True)
    refused = engine.client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service)
    assert (refused.status_code, refused.json()["code"]) == (429, "upstream_client_error")
    assert refused.json()["details"]["upstreamStatus"] == 429
    engine.simulator.app.faults = Faults()
    assert (
        engine.client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service).status_code
        == 202
    )


def test_breaker_opens_under_faults_and_recovers(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    grant(engine, "fox", 1)
    service = vend(engine, "fox")
    engine.simulator.app.faults = Faults(error_rate=1.0, error_status=500)
    codes = []
    with httpx.Client(
        base_url=engine.url, event_hooks={"response": [spec_recorder.sync_hook()]}
    ) as client:
        for _ in range(6):
            codes.append(
                client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service).status_code
            )
        health = client.get("/health/services").json()
        assert codes[:3] == [502, 502, 502] and codes[3:] == [503, 503, 503]
        assert (
            health["circuitBreaker"]["state"] == "open" and health["ttt"]["status"] == "unhealthy"
        )
        assert engine.simulator.app.stats.transcribe_calls == 3
        engine.simulator.app.faults = Faults()
        wait_out_cooldown(client)
        assert (
            client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service).status_code == 202
        )
        for _ in range(2):
            client.get("/health")
    assert balance_of(engine, "fox") == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9999/tiktok?h=tiktok.com",
        "https://169.254.169.254/latest/meta-data",
        "https://www.tiktok.com@127.0.0.1/@u/video/1",
        "https://10.0.0.1/@u/video/1",
        "https://evil.example/tiktok.com/@u/video/1",
        "file:///etc/passwd",
        "https://www.tiktok.com.evil.example/@u/video/1",
    ],
)
def test_ssrf_attempts_are_refused_without_any_outbound_request(
    engine: LocalEngine, url: str
) -> None:
    grant(engine, "gil", 1)
    service = vend(engine, "gil")
    meta = engine.client.get("/meta", params={"url": url})
    transcribe = engine.client.post("/ttt/transcribe", json={"url": url}, headers=service)
    assert (meta.status_code, transcribe.status_code) == (422, 400)  # as the original Worker
    stats = engine.simulator.app.stats
    assert stats.meta_fetches == 0 and stats.transcribe_calls == 0


def test_redirect_out_of_tiktok_is_not_followed(engine: LocalEngine) -> None:
    response = engine.client.get("/meta", params={"url": "https://vm.tiktok.com/EVIL/"})
    assert (response.status_code, response.json()["code"]) == (502, "metadata_redirect_refused")
    assert engine.simulator.app.stats.paths == ["GET /vm.tiktok.com/EVIL/"]


@pytest.mark.parametrize(
    "path",
    [
        "/ttt/status/%2E%2E%2Fhealth",
        "/ttt/status/..%2F__stats",
        "/ttt/status/a%3Fx%3D1",
        "/ttt/status/%2e%2e",
        "/ttt/status/a%00b",
        "/ttt/status/" + "a" * 300,
    ],
)
def test_path_tricks_on_status_never_reach_the_upstream(engine: LocalEngine, path: str) -> None:
    response = engine.client.get(path, headers=engine.user_headers("hal"))
    assert response.status_code in (400, 404)
    assert engine.simulator.app.stats.status_calls == 0
    assert engine.simulator.app.stats.paths == []


def test_status_belongs_to_the_submitter(engine: LocalEngine) -> None:
    grant(engine, "ivy", 1)
    job = engine.client.post(
        "/ttt/transcribe", json={"url": VIDEO}, headers=vend(engine, "ivy")
    ).json()
    other = engine.client.get(f"/ttt/status/{job['jobId']}", headers=engine.user_headers("jay"))
    assert (other.status_code, other.json()["code"]) == (404, "job_not_found")
    engine.simulator.app.jobs.clear()  # an upstream restart forgets every job
    lost = engine.client.get(f"/ttt/status/{job['jobId']}", headers=engine.user_headers("ivy"))
    # Within the grace period, the last state the engine knew (issue 18: never a 404).
    assert (lost.status_code, lost.json()["status"]) == (200, "queued")


def test_metadata_is_cached_and_failures_are_not(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    url = "https://vm.tiktok.com/ZMcache1/"
    with httpx.Client(
        base_url=engine.url, event_hooks={"response": [spec_recorder.sync_hook()]}
    ) as client:
        first = client.get("/meta", params={"url": url}).json()
        second = client.get("/meta", params={"url": url}).json()
        assert first["cached"] is False and second["cached"] is True
        assert {k: v for k, v in first.items() if k != "cached"} == {
            k: v for k, v in second.items() if k != "cached"
        }
        assert (
            client.get(
                "/meta", params={"url": "https://www.tiktok.com/@broken/video/1"}
            ).status_code
            == 502
        )
        assert (
            client.get(
                "/meta", params={"url": "https://www.tiktok.com/@broken/video/1"}
            ).status_code
            == 502
        )
        assert (
            client.get("/meta", params={"url": "https://www.tiktok.com/@huge/video/1"}).status_code
            == 502
        )
    assert engine.simulator.app.stats.meta_fetches == 2 + 2 + 1


def test_health_services_has_the_shape_the_app_reads(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    with httpx.Client(
        base_url=engine.url, event_hooks={"response": [spec_recorder.sync_hook()]}
    ) as client:
        body = client.get("/health/services").json()
    assert body["connectivity"]["ttt"] in {"healthy", "degraded", "unhealthy", "unknown"}
    assert body["ttt"]["status"] == body["connectivity"]["ttt"]
