"""The simulator sends webhooks as TTTranscribe does (upstream reference §8), checked by a
loopback receiver that recomputes the §8.3 signature and idempotency key on its own."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from engine.local import free_port
from engine.upstream.sim_server import BackgroundSimulator
from tests.e2e import SimulatorProcess

SECRET = "sim-webhook-secret-0123456789abcdef"
WEBHOOK_SECRET = "webhook-only-secret-0123456789abcd"
AUTH = {"X-Engine-Auth": SECRET}


class Receiver:
    """A loopback HTTP server that records every POST and answers `status` (200 by default)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._arrived:
                    receiver.received.append(
                        ({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    receiver._arrived.notify_all()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhooks/tttranscribe"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(
        self, count: int, timeout: float = 10.0, secret: str = WEBHOOK_SECRET
    ) -> list[dict[str, Any]]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.received) >= count, timeout), (
                f"{len(self.received)} webhooks arrived, expected {count}"
            )
        return [verified(headers, body, secret) for headers, body in self.received]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def verified(headers: dict[str, str], raw: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, Any]:
    """§8.3, written from the reference, not from the simulator's code."""
    body = json.loads(raw)
    signed = {k: body[k] for k in ("jobId", "requestId", "status", "usage", "timestamp")}
    signed["idempotencyKey"] = body["idempotencyKey"]
    text = json.dumps(signed, separators=(",", ":"), ensure_ascii=False)
    expected = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-tttranscribe-signature"], expected)
    assert body["signature"] == expected
    key = hashlib.sha256(f"{body['jobId']}-{body['status']}-{body['timestamp']}".encode())
    assert body["idempotencyKey"] == headers["x-idempotency-key"] == key.hexdigest()
    assert list(body["usage"]) == [
        "audioDurationSeconds",
        "transcriptCharacters",
        "modelUsed",
        "processingTimeSeconds",
    ]
    order = ["jobId", "requestId", "status", "usage", "error", "timestamp", "cacheHit"]
    assert list(body) == [k for k in order if k in body] + ["idempotencyKey", "signature"]
    assert headers["content-type"] == "application/json"
    return dict(body)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def sim(receiver: Receiver) -> Iterator[httpx.Client]:
    background = BackgroundSimulator(SECRET)
    background.app.settle_seconds = 0.3
    background.start()
    with httpx.Client(base_url=background.url, headers=AUTH, timeout=10) as client:
        target = {"url": receiver.url, "secret": WEBHOOK_SECRET}
        assert client.post("/__webhook", json=target).json() == {"url": receiver.url}
        yield client
    background.stop()


def submit(client: httpx.Client, url: str, request_id: str | None) -> str:
    body = {"url": url} if request_id is None else {"url": url, "requestId": request_id}
    response = client.post("/transcribe", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_a_failing_job_nobody_polls_sends_one_signed_webhook(
    sim: httpx.Client, receiver: Receiver
) -> None:
    silent = submit(sim, "https://www.tiktok.com/@fail/video/1", None)
    job = submit(sim, "https://www.tiktok.com/@fail/video/2", "req-1")
    [hook] = receiver.wait_for(1)
    assert (hook["jobId"], hook["requestId"], hook["status"]) == (job, "req-1", "failed")
    assert hook["error"] and "cacheHit" not in hook
    assert hook["usage"]["audioDurationSeconds"] == 0
    assert hook["usage"]["transcriptCharacters"] == 0
    # the job without requestId failed too (its timer ran first) but sent nothing
    assert sim.get(f"/status/{silent}").json()["status"] == "failed"
    for _ in range(3):
        assert sim.get(f"/status/{job}").json()["status"] == "failed"
    stats = sim.get("/__stats").json()
    assert stats["jobs_created"] == 2
    assert (stats["webhooks_sent"], stats["webhooks_delivered"]) == (1, 1)
    assert len(receiver.received) == 1  # once per job, whatever the polls


def test_completion_by_polls_and_a_cache_hit_at_submission(
    sim: httpx.Client, receiver: Receiver
) -> None:
    url = "https://www.tiktok.com/@creator/video/3"
    job = submit(sim, url, "req-2")
    statuses = [sim.get(f"/status/{job}").json()["status"] for _ in range(4)]  # one phase each
    assert statuses[-1] == "completed"
    [done] = receiver.wait_for(1)
    assert (done["status"], done["cacheHit"], done["requestId"]) == ("completed", False, "req-2")
    assert done["usage"]["transcriptCharacters"] > 0 and "error" not in done

    assert sim.post("/__faults", json={"cacheHits": True}).status_code == 200
    cached = submit(sim, url + "?lang=en", "req-3")
    hooks = receiver.wait_for(2)
    assert (hooks[1]["jobId"], hooks[1]["cacheHit"]) == (cached, True)
    status = sim.get(f"/status/{cached}").json()
    assert (status["status"], status["cacheHit"]) == ("completed", True)


def test_delivery_is_one_attempt_and_only_2xx_or_409_count(
    sim: httpx.Client, receiver: Receiver
) -> None:
    receiver.status = 409
    submit(sim, "https://www.tiktok.com/@fail/video/4", "req-4")
    receiver.wait_for(1)
    receiver.status = 500
    failing = submit(sim, "https://www.tiktok.com/@fail/video/5", "req-5")
    receiver.wait_for(2)
    deadline = time.monotonic() + 10
    while not (stats := sim.get("/__stats").json())["webhooks_failed"]:
        assert time.monotonic() < deadline
    assert stats["webhooks_delivered"] == 1
    assert stats["webhooks_failed"] == [{"jobId": failing, "lastError": "HTTP 500"}]
    assert len(receiver.received) == 2  # no retry


def test_not_ready_gate_on_ready_and_transcribe(sim: httpx.Client) -> None:
    assert httpx.get(str(sim.base_url) + "/ready").json()["ready"] is True  # public
    assert sim.post("/__faults", json={"notReady": True}).json()["not_ready"] is True
    ready = httpx.get(str(sim.base_url) + "/ready")
    assert ready.status_code == 503
    assert ready.json() == {
        "ready": False,
        "reason": "Missing required secrets",
        "missing": ["HF_API_KEY"],
    }
    refused = sim.post("/transcribe", json={"url": "https://www.tiktok.com/@u/video/1"})
    assert refused.status_code == 503 and refused.json()["error"] == "service_unavailable"
    assert "retry-after" not in refused.headers
    assert sim.post("/transcribe", content=b"{bad").status_code == 400  # JSON is parsed first
    assert sim.post("/__restart").json() == {"restarted": True}


def test_the_simulator_process_takes_its_webhook_target_from_the_command_line(
    receiver: Receiver,
) -> None:
    """`pluct-engine simulator --webhook-url`: signed with the shared secret (no other set)."""
    sim = SimulatorProcess(free_port(), SECRET, receiver.url).start()
    try:
        with httpx.Client(base_url=sim.url, headers=AUTH, timeout=10) as client:
            job = submit(client, "https://www.tiktok.com/@fail/video/6", "req-6")
            [hook] = receiver.wait_for(1, timeout=15, secret=SECRET)  # after ~2 s, unpolled
    finally:
        sim.kill()
    assert (hook["jobId"], hook["status"], hook["requestId"]) == (job, "failed", "req-6")
