"""`/health/services` tells the truth about TTTranscribe, and a not-ready upstream costs nothing.

Against real processes: the engine (`LocalEngine`) and the simulator as its own process
(`pluct-engine simulator`), killed and started again on the same port.  The probe interval is
0.2 s here (`TTT_PROBE_INTERVAL_SECONDS`), the 15 s of issue 18 are the deadlines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from engine.local import LocalEngine, free_port
from engine.upstream.sim_state import Faults, Stats
from tests.e2e import SimulatorProcess, audit_trail, balance_of, grant, wait_for
from tests.spec_check import SpecRecorder

pytestmark = pytest.mark.server
VIDEO = "https://www.tiktok.com/@creator/video/7300000000000000042"


@pytest.fixture
def upstream_and_engine() -> Iterator[tuple[SimulatorProcess, LocalEngine]]:
    port = free_port()
    with LocalEngine(
        env={
            "TTT_BASE": f"http://127.0.0.1:{port}",
            "TTT_PROBE_INTERVAL_SECONDS": "0.2",
        },
    ) as engine:
        sim = SimulatorProcess(port, engine.ttt_secret).start()
        try:
            yield sim, engine
        finally:
            sim.kill()


def test_health_services_follows_the_upstream_down_up_and_not_ready(
    upstream_and_engine: tuple[SimulatorProcess, LocalEngine], spec_recorder: SpecRecorder
) -> None:
    sim, engine = upstream_and_engine
    seen: list[dict[str, Any]] = []
    with httpx.Client(
        base_url=engine.url, event_hooks={"response": [spec_recorder.sync_hook()]}
    ) as client:

        def ttt_is(status: str) -> Callable[[], bool]:
            def check() -> bool:
                body = client.get("/health/services").json()
                seen.append(body)
                return bool(body["connectivity"]["ttt"] == status == body["ttt"]["status"])

            return check

        wait_for(ttt_is("healthy"), "healthy at start")
        assert seen[-1]["ttt"]["lastProbe"]["endpoint"] == "/ready"
        assert seen[-1]["circuitBreaker"]["state"] == "closed"
        assert seen[-1]["probeIntervalSeconds"] == 0.2

        sim.kill()
        wait_for(ttt_is("degraded"), "degraded after the upstream went down")
        down = seen[-1]["ttt"]
        assert down["reason"].startswith("unreachable") and down["lastProbe"]["ok"] is False

        sim.start()
        wait_for(ttt_is("healthy"), "healthy once the upstream is back")
        assert "reason" not in seen[-1]["ttt"]

        sim.control("/__faults", {"notReady": True})
        wait_for(ttt_is("degraded"), "degraded while the upstream is not ready")
        probe = seen[-1]["ttt"]["lastProbe"]
        assert (probe["statusCode"], probe["endpoint"]) == (503, "/ready")
        assert "Missing required secrets" in seen[-1]["ttt"]["reason"]
        assert "HF_API_KEY" in seen[-1]["ttt"]["reason"]

        sim.control("/__faults", {})
        wait_for(ttt_is("healthy"), "healthy once the upstream is ready")
        assert client.head("/health/services").status_code == 200


@pytest.fixture(scope="module")
def probed_engine() -> Iterator[LocalEngine]:
    with LocalEngine(
        rate_limit_per_minute=0,
        env={"TTT_PROBE_INTERVAL_SECONDS": "0.2", "CORS_ORIGINS": "https://app.example"},
    ) as engine:
        yield engine


@pytest.fixture
def engine(probed_engine: LocalEngine) -> LocalEngine:
    probed_engine.simulator.app.faults = Faults()
    probed_engine.simulator.app.stats = Stats()
    return probed_engine


def test_not_ready_upstream_is_503_with_retry_after_and_the_credit_stays_usable(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    grant(engine, "nora", 1)
    vended = engine.client.post("/v1/vend-token", headers=engine.user_headers("nora")).json()
    service = {"Authorization": f"Bearer {vended['token']}"}
    with httpx.Client(
        base_url=engine.url, event_hooks={"response": [spec_recorder.sync_hook()]}
    ) as client:
        before = client.get("/health/services").json()["ttt"]["consecutiveFailures"]
        engine.simulator.app.faults = Faults(not_ready=True)
        refused = client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service)
        assert (refused.status_code, refused.json()["code"]) == (503, "upstream_unavailable")
        assert refused.headers["retry-after"] == "30"  # the real upstream sends none
        assert refused.json()["details"]["missing"] == ["HF_API_KEY"]
        engine.simulator.app.faults = Faults(not_ready=True, retry_after=7)
        again = client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service)
        assert (again.status_code, again.headers["retry-after"]) == (503, "7")
        # each readiness 503 is one breaker failure, not two
        after = client.get("/health/services").json()["ttt"]["consecutiveFailures"]
        assert after - before == 2

        engine.simulator.app.faults = Faults()
        accepted = client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service)
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()["jobId"]
        for _ in range(10):
            status = client.get(f"/ttt/status/{job}", headers=engine.user_headers("nora"))
            if status.json()["status"] == "completed":
                break
        assert status.json()["result"]["transcription"]
    assert engine.simulator.app.stats.jobs_created == 1
    assert balance_of(engine, "nora") == 0
    assert [e["action"] for e in audit_trail(engine, "nora")] == ["grant", "vend"]


def test_cors_preflight_and_headers_for_listed_origins_only(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    with httpx.Client(
        base_url=engine.url, event_hooks={"response": [spec_recorder.sync_hook()]}
    ) as client:
        preflight = client.options(
            "/ttt/transcribe",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        health = client.get("/health", headers={"Origin": "https://app.example"})
        assert health.headers["access-control-allow-origin"] == "https://app.example"
        assert "Retry-After" in health.headers["access-control-expose-headers"]
        stranger = client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in stranger.headers
        refused = client.options(
            "/ttt/transcribe",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        # an unlisted origin is no origin: the plain 204, and nothing that lets a browser in
        assert refused.status_code == 204 and "allow" in refused.headers
        assert not [h for h in refused.headers if h.startswith("access-control-")]


def test_head_on_get_routes_and_meta_refuses_bad_urls_with_422(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    with httpx.Client(
        base_url=engine.url, event_hooks={"response": [spec_recorder.sync_hook()]}
    ) as client:
        head = client.head("/health")
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) > 0  # the GET's length, as RFC 9110 allows
        unauthorised = client.head("/v1/credits/balance")
        assert (unauthorised.status_code, unauthorised.content) == (401, b"")
        assert client.head("/v1/credits/balance", headers=engine.user_headers("h")).is_success
        assert client.head("/openapi.yaml").status_code == 200
        assert client.head("/v1/credits/add").status_code == 405  # POST-only stays POST-only
        for params in ({}, {"url": ""}, {"url": "https://example.com/x.wav"}):
            meta = client.get("/meta", params=params)
            assert (meta.status_code, meta.json()["code"]) == (422, "invalid_url"), params
    assert engine.simulator.app.stats.meta_fetches == 0


def test_without_cors_origins_there_is_no_cors(tmp_path: object) -> None:
    with LocalEngine() as engine:
        preflight = engine.client.options(
            "/ttt/transcribe",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        health = engine.client.get("/health", headers={"Origin": "https://app.example"})
    assert preflight.status_code == 204 and "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in health.headers
