"""Unit tests of the upstream edge: URL rules, client mappings (respx), breaker, fetcher."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx

from engine.domain.metadata import parse_page
from engine.domain.urls import normalise_tiktok_url
from engine.errors import EngineError, InvalidUrl
from engine.upstream.breaker import BreakerState, CircuitBreaker
from engine.upstream.client import TTTClient
from engine.upstream.fetcher import PageFetcher
from engine.upstream.monitor import UpstreamMonitor

BASE = "http://ttt.test"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("https://www.tiktok.com/@user/video/123", "https://www.tiktok.com/@user/video/123"),
        (
            "  https://tiktok.com/@a.b-c/video/9/?lang=en#x ",
            "https://www.tiktok.com/@a.b-c/video/9",
        ),
        ("https://m.tiktok.com/@u/video/1", "https://www.tiktok.com/@u/video/1"),
        ("HTTPS://VM.TIKTOK.COM/ZMabc123/", "https://vm.tiktok.com/ZMabc123/"),
        ("https://vt.tiktok.com/ZSabc", "https://vt.tiktok.com/ZSabc/"),
        ("https://www.tiktok.com:443/@u/video/1", "https://www.tiktok.com/@u/video/1"),
    ],
)
def test_tiktok_urls_are_normalised(raw: str, canonical: str) -> None:
    assert normalise_tiktok_url(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not a url",
        "http://www.tiktok.com/@u/video/1",
        "ftp://www.tiktok.com/@u/video/1",
        "https://example.com/x.wav",
        "https://example.com/?q=tiktok.com",
        "https://www.tiktok.com.evil.com/@u/video/1",
        "https://eviltiktok.com/@u/video/1",
        "https://www.tiktok.com@127.0.0.1/@u/video/1",
        "https://user:pw@www.tiktok.com/@u/video/1",
        "https://127.0.0.1/@u/video/1",
        "https://[::1]/@u/video/1",
        "https://10.0.0.1/x",
        "https://www.tiktok.com:8080/@u/video/1",
        "https://www.tiktok.com/t/ZT8abc/",
        "https://m.tiktok.com/v/123.html",
        "https://www.tiktok.com/@u/video/1;rm",
        "https://vm.tiktok.com/a$(id)/",
        "https://vm.tiktok.com/../../etc/passwd",
        "https://www.tiktok.com/@u/video/1'\"",
        "https://www.tiktok.com:99999/@u/video/1",
        "https://" + "a" * 3000,
    ],
)
def test_everything_else_is_refused(raw: str) -> None:
    with pytest.raises(InvalidUrl):
        normalise_tiktok_url(raw)


def _client(clock: FakeClock | None = None, **breaker: int) -> TTTClient:
    return TTTClient(
        BASE,
        "shh",
        CircuitBreaker("ttt", clock=clock or FakeClock(), **breaker),  # type: ignore[arg-type]
        transcribe_timeout=0.5,
        status_timeout=0.5,
    )


@respx.mock
async def test_submit_sends_auth_agent_and_request_id_once() -> None:
    route = respx.post(f"{BASE}/transcribe").mock(
        return_value=httpx.Response(202, json={"id": "j1", "status": "queued", "extra": [1]})
    )
    reply = await _client().submit("https://www.tiktok.com/@u/video/1", "req-7")
    assert reply.status_code == 202 and reply.body == {"id": "j1", "status": "queued", "extra": [1]}
    sent = route.calls.last.request
    assert sent.headers["x-engine-auth"] == "shh"
    assert sent.headers["user-agent"].startswith("pluct-engine/")
    assert sent.headers["x-request-id"] == "req-7"
    assert "authorization" not in sent.headers
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("response", "status", "code"),
    [
        (httpx.Response(400, json={"error": "invalid_url"}), 400, "upstream_client_error"),
        (httpx.Response(429, json={"error": "rate_limited"}), 429, "upstream_client_error"),
        (httpx.Response(500, json={"error": "processing_failed"}), 502, "upstream_error"),
        (httpx.Response(503, text="<html>down</html>"), 503, "upstream_unavailable"),
        (httpx.Response(202, text="{not json"), 502, "upstream_bad_response"),
        (httpx.Response(202, json={"status": "queued"}), 502, "upstream_bad_response"),
        (httpx.Response(202, json=[1, 2]), 502, "upstream_bad_response"),
    ],
)
@respx.mock
async def test_submit_maps_upstream_answers(
    response: httpx.Response, status: int, code: str
) -> None:
    route = respx.post(f"{BASE}/transcribe").mock(return_value=response)
    with pytest.raises(EngineError) as caught:
        await _client().submit("https://www.tiktok.com/@u/video/1", "r")
    assert (caught.value.status_code, caught.value.error_code) == (status, code)
    assert route.call_count == 1  # never retried


NOT_READY = {
    "error": "service_unavailable",
    "message": "TTTranscribe is not ready yet",
    "details": {"reason": "missing secrets", "missing": ["HF_API_KEY"]},
}


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({}, "30"),
        ({"Retry-After": "7"}, "7"),
        ({"Retry-After": "x"}, "30"),
        ({"Retry-After": b"\xb2"}, "30"),  # read as "²", and str.isdigit() is true of it
        ({"Retry-After": "9" * 5000}, "30"),  # more digits than int() will parse
    ],
)
@respx.mock
async def test_readiness_503_is_upstream_unavailable_counted_once(
    headers: dict[str, str | bytes], retry_after: str
) -> None:
    respx.post(f"{BASE}/transcribe").mock(
        return_value=httpx.Response(503, json=NOT_READY, headers=headers)
    )
    client = _client()
    with pytest.raises(EngineError) as caught:
        await client.submit("https://www.tiktok.com/@u/video/1", "r")
    error = caught.value
    assert (error.status_code, error.error_code) == (503, "upstream_unavailable")
    assert error.headers["Retry-After"] == retry_after
    assert error.details["reason"] == "missing secrets"
    assert error.details["missing"] == ["HF_API_KEY"]
    snap = client.breaker.snapshot()
    assert (snap.calls_seen, snap.consecutive_failures) == (1, 1)


@respx.mock
async def test_transport_failures_and_timeouts() -> None:
    respx.post(f"{BASE}/transcribe").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(EngineError) as refused:
        await _client().submit("u", "r")
    assert (refused.value.status_code, refused.value.error_code) == (502, "upstream_error")

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    respx.get(f"{BASE}/status/j1").mock(side_effect=hang)
    with pytest.raises(EngineError) as slow:
        await _client().status("j1")
    assert (slow.value.status_code, slow.value.error_code) == (504, "upstream_timeout")


@respx.mock
async def test_status_encodes_the_id_and_maps_404() -> None:
    route = respx.get(url__regex=rf"{BASE}/status/.*").mock(
        return_value=httpx.Response(404, json={"error": "job_not_found"})
    )
    with pytest.raises(EngineError) as caught:
        await _client().status("a b")
    assert caught.value.error_code == "job_not_found"
    assert route.calls.last.request.url.raw_path == b"/status/a%20b"


@respx.mock
async def test_breaker_opens_fails_fast_and_recovers() -> None:
    clock = FakeClock()
    client = _client(clock, failure_threshold=3, cooldown_seconds=10, probes=2)
    route = respx.get(f"{BASE}/status/j").mock(return_value=httpx.Response(500))
    for _ in range(3):
        with pytest.raises(EngineError):
            await client.status("j")
    with pytest.raises(EngineError) as fast:
        await client.status("j")
    assert (fast.value.status_code, fast.value.error_code) == (503, "circuit_open")
    assert fast.value.headers["Retry-After"] == "10"
    assert route.call_count == 3
    clock.now += 10
    route.mock(return_value=httpx.Response(200, json={"id": "j", "status": "queued"}))
    assert client.breaker.snapshot().state is BreakerState.HALF_OPEN
    await client.status("j")
    await client.status("j")
    assert client.breaker.snapshot().state is BreakerState.CLOSED


def test_breaker_opens_on_failure_rate_and_half_open_failure_reopens() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "x", failure_threshold=100, min_calls=10, cooldown_seconds=5, clock=clock
    )
    for i in range(10):
        breaker.before_call()
        breaker.record(i % 2 == 0, 1.0)
    assert breaker.snapshot().state is BreakerState.OPEN
    clock.now += 5
    breaker.before_call()
    breaker.record(False, 1.0)
    assert breaker.snapshot().state is BreakerState.OPEN


def test_half_open_admits_only_a_few_probes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("x", failure_threshold=1, cooldown_seconds=1, probes=2, clock=clock)
    breaker.before_call()
    breaker.record(False, 1.0)
    clock.now += 1
    breaker.before_call()
    breaker.before_call()
    with pytest.raises(EngineError):
        breaker.before_call()


def _fetcher(max_bytes: int = 10_000) -> PageFetcher:
    return PageFetcher(base="", timeout=0.5, max_bytes=max_bytes)


@respx.mock
async def test_fetcher_follows_redirects_only_inside_the_allow_list() -> None:
    respx.get("https://vm.tiktok.com/ABC/").mock(
        return_value=httpx.Response(301, headers={"location": "https://www.tiktok.com/@x/video/1"})
    )
    respx.get("https://www.tiktok.com/@x/video/1").mock(
        return_value=httpx.Response(200, text="<title>t</title>")
    )
    final, page = await _fetcher().fetch("https://vm.tiktok.com/ABC/")
    assert final == "https://www.tiktok.com/@x/video/1" and "<title>" in page

    internal = respx.get("http://169.254.169.254/latest").mock(return_value=httpx.Response(200))
    respx.get("https://vm.tiktok.com/EVIL/").mock(
        return_value=httpx.Response(302, headers={"location": "http://169.254.169.254/latest"})
    )
    with pytest.raises(EngineError) as refused:
        await _fetcher().fetch("https://vm.tiktok.com/EVIL/")
    assert refused.value.error_code == "metadata_redirect_refused"
    assert internal.call_count == 0


@respx.mock
async def test_fetcher_caps_size_and_reports_failures() -> None:
    respx.get("https://www.tiktok.com/@big/video/1").mock(
        return_value=httpx.Response(200, content=b"x" * 20_000)
    )
    with pytest.raises(EngineError) as big:
        await _fetcher().fetch("https://www.tiktok.com/@big/video/1")
    assert big.value.error_code == "metadata_too_large"
    respx.get("https://www.tiktok.com/@gone/video/1").mock(return_value=httpx.Response(404))
    with pytest.raises(EngineError) as gone:
        await _fetcher().fetch("https://www.tiktok.com/@gone/video/1")
    assert gone.value.status_code == 502


def test_page_parsing_gives_integers_and_strings() -> None:
    page = (
        '<title>Fallback</title><meta property="og:title" content="Clip &amp; more"/>'
        '<meta property="og:description" content="desc"/>{"author":"Ann","duration":41.7}'
    )
    meta = parse_page(
        page, "https://www.tiktok.com/@ann/video/1", "https://www.tiktok.com/@ann/video/1"
    )
    assert (meta.title, meta.author, meta.description, meta.duration, meta.handle) == (
        "Clip & more",
        "Ann",
        "desc",
        41,
        "ann",
    )
    empty = parse_page("", "https://vm.tiktok.com/X/", "https://vm.tiktok.com/X/")
    assert (empty.title, empty.duration, empty.handle) == ("TikTok video", 0, "")


@respx.mock
async def test_readiness_falls_back_to_health_where_ready_is_404() -> None:
    respx.get(f"{BASE}/ready").mock(return_value=httpx.Response(404, text="404 Not Found"))
    health = respx.get(f"{BASE}/health").mock(return_value=httpx.Response(200, json={}))
    ready = await _client().readiness()
    assert (ready.ok, ready.endpoint, ready.status_code) == (True, "/health", 200)
    assert "x-engine-auth" not in health.calls.last.request.headers  # public routes


@respx.mock
async def test_readiness_reports_why_not() -> None:
    body = {"ready": False, "reason": "Missing required secrets", "missing": ["HF_API_KEY"]}
    respx.get(f"{BASE}/ready").mock(return_value=httpx.Response(503, json=body))
    ready = await _client().readiness()
    assert (ready.ok, ready.status_code) == (False, 503)
    assert ready.reason == "Missing required secrets (missing: HF_API_KEY)"
    respx.get(f"{BASE}/ready").mock(side_effect=httpx.ConnectError("refused"))
    assert (await _client().readiness()).reason == "unreachable: ConnectError"


@respx.mock
async def test_monitor_verdict_recovers_after_failures_and_an_open_breaker() -> None:
    clock = FakeClock()
    client = _client(clock, failure_threshold=2, cooldown_seconds=10)
    monitor = UpstreamMonitor(client, 0.1)
    assert monitor.view().status == "unknown"
    ready = respx.get(f"{BASE}/ready").mock(return_value=httpx.Response(200, json={}))
    await monitor.probe_once()
    assert monitor.view().status == "healthy"
    status = respx.get(f"{BASE}/status/j").mock(return_value=httpx.Response(500))
    clock.now += 1
    with pytest.raises(EngineError):
        await client.status("j")
    assert monitor.view().status == "degraded"  # a real call failed after the good probe
    clock.now += 1
    await monitor.probe_once()
    assert monitor.view().status == "healthy"  # the bug: it stayed degraded for good
    with pytest.raises(EngineError):
        await client.status("j")
    with pytest.raises(EngineError):
        await client.status("j")
    assert monitor.view().status == "unhealthy"  # open
    await monitor.probe_once()
    assert monitor.view().status == "unhealthy"  # a good probe does not cut the cool-down
    clock.now += 10
    await monitor.probe_once()  # nobody calls while we say degraded: the probe closes it
    view = monitor.view()
    assert (view.status, view.breaker.state) == ("healthy", BreakerState.CLOSED)
    ready.mock(return_value=httpx.Response(503, json={"ready": False, "reason": "r"}))
    await monitor.probe_once()
    assert (monitor.view().status, monitor.view().reason) == ("degraded", "r")
    assert status.call_count == 2  # the third call was refused by the open breaker
