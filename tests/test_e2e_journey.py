"""Issue 18's "Must show": the mobile app's latest legacy journey, end to end, as the app does it.

Real processes only: the engine (`LocalEngine`) with `TTT_BASE` pointed at a `pluct-engine
simulator` process whose webhooks (`--webhook-url`) go to the engine's
`/webhooks/tttranscribe` with the same shared secret, through `WebhookTap`, a loopback relay
that forwards each delivery unchanged and keeps a copy, so a test can replay exactly what the
simulator sent.  `MobileApp` (`tests/mobile_app.py`) speaks as the Android client: an Era C
user JWT it mints itself, its headers, its bodies, and every response checked for the fields
and JSON types the client's models require.

No sleeps: the simulator advances a job one phase per poll, and what happens in the background
(a webhook, a probe) is waited for as a condition with a deadline (`tests.e2e.wait_for`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from engine.local import LocalEngine, RedisServer, free_port
from engine.upstream.simulator import TRANSCRIPT
from tests.e2e import SimulatorProcess, audit_trail, grant
from tests.mobile_app import (
    MobileApp,
    app_text,
    assert_app_parses_error,
    assert_app_parses_status,
)
from tests.spec_check import SpecRecorder

pytestmark = pytest.mark.server
VIDEO = "https://www.tiktok.com/@creator/video/7300000000000001801"
FAILING = "https://www.tiktok.com/@fail/video/7300000000000001802"


# -- the webhook path, observable ------------------------------------------------------------
@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    engine_status: int
    engine_answer: bytes

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class WebhookTap:
    """A loopback relay: forwards each webhook unchanged to the engine, answers with the
    engine's answer (so the simulator's delivery semantics are the engine's), keeps a copy."""

    _FORWARDED = ("content-type", "x-tttranscribe-signature", "x-idempotency-key", "user-agent")

    def __init__(self, target: str) -> None:
        self.deliveries: list[Delivery] = []
        self._arrived = threading.Condition()
        tap = self

        class Relay(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                forwarded = {k: v for k, v in headers.items() if k in tap._FORWARDED}
                answer = httpx.post(target, content=raw, headers=forwarded, timeout=10)
                with tap._arrived:
                    tap.deliveries.append(
                        Delivery(forwarded, raw, answer.status_code, answer.content)
                    )
                    tap._arrived.notify_all()
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhooks/tttranscribe"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def delivery_for(self, job_id: str, deadline: float = 15.0) -> Delivery:
        """The (one) delivery naming our job, waited for on a condition with a deadline."""

        def mine() -> list[Delivery]:
            return [d for d in self.deliveries if d.payload.get("requestId") == job_id]

        with self._arrived:
            assert self._arrived.wait_for(lambda: mine(), deadline), f"no webhook for {job_id}"
            return mine()[0]

    def count_for(self, job_id: str) -> int:
        with self._arrived:
            return sum(d.payload.get("requestId") == job_id for d in self.deliveries)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def sign_8_3(secret: str, payload: dict[str, Any]) -> str:
    """upstream-tttranscribe.md §8.3, written from the reference for this test: HMAC-SHA256 of
    the compact JSON of exactly six keys in order, non-ASCII unescaped."""
    usage_keys = (
        "audioDurationSeconds",
        "transcriptCharacters",
        "modelUsed",
        "processingTimeSeconds",
    )
    signed = {
        "jobId": payload["jobId"],
        "requestId": payload["requestId"],
        "status": payload["status"],
        "usage": {k: payload["usage"][k] for k in usage_keys},
        "timestamp": payload["timestamp"],
        "idempotencyKey": payload["idempotencyKey"],
    }
    text = json.dumps(signed, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def post_webhook(app: MobileApp, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return app.http.post("/webhooks/tttranscribe", content=body, headers=headers)


# -- the processes --------------------------------------------------------------------------
@dataclass
class Stack:
    engine: LocalEngine
    sim: SimulatorProcess
    tap: WebhookTap
    apps: list[MobileApp] = field(default_factory=list)

    def app(self, name: str, recorder: SpecRecorder) -> MobileApp:
        made = MobileApp(self.engine.url, self.engine.jwt_secret, name, recorder)
        self.apps.append(made)
        return made

    def refunds_and_vends(self, user: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        trail = audit_trail(self.engine, user)
        return (
            [e for e in trail if e["action"] == "refund"],
            [e for e in trail if e["action"] == "vend"],
        )

    def assert_ledger_clean(self) -> None:
        verify = self.engine.ledger_verify()
        assert verify.returncode == 0, verify.stdout + verify.stderr


def _stack(store_url: str | None) -> Stack:
    sim_port = free_port()
    engine = LocalEngine(
        store_url=store_url,
        env={"TTT_BASE": f"http://127.0.0.1:{sim_port}", "TTT_PROBE_INTERVAL_SECONDS": "0.2"},
    )
    tap = WebhookTap(f"{engine.url}/webhooks/tttranscribe")
    sim = SimulatorProcess(sim_port, engine.ttt_secret, webhook_url=tap.url)
    try:
        sim.start()
        engine.start()
    except BaseException:
        sim.kill()
        engine.close()
        tap.close()
        raise
    return Stack(engine, sim, tap)


@pytest.fixture(scope="module")
def stacks(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Stack]]:
    """One engine + simulator process + tap per store, made on first use, shared by the
    module (each test is its own user)."""
    made: dict[str, Stack] = {}

    def get(store: str) -> Stack:
        if store not in made:
            redis: RedisServer | None = (
                request.getfixturevalue("redis_server") if store == "redis" else None
            )
            made[store] = _stack(redis.url if redis is not None else None)
        return made[store]

    yield get
    for stack in made.values():
        for app in stack.apps:
            app.close()
        stack.sim.kill()
        stack.engine.close()
        stack.tap.close()


def completed_journey(stack: Stack, app: MobileApp) -> tuple[str, dict[str, Any], int]:
    """Health → wallet fallback → balance → vend → transcribe → poll to text, with the
    app's retries of vend and transcribe (same body id, new header id): (job, final, balance
    before)."""
    app.wait_until_ttt("healthy")
    app.wallet_fallback(VIDEO)
    before = app.balance()["balance"]
    created = stack.sim.stats()["jobs_created"]
    vend_id, submit_id = "pluct_" + secrets.token_hex(12), "pluct_" + secrets.token_hex(12)
    vended = app.vend(vend_id)
    assert vended["balanceAfter"] == before - 1
    retried = app.vend(vend_id)  # an automatic retry: same clientRequestId, same vend
    assert (retried["token"], retried["requestId"]) == (vended["token"], vended["requestId"])
    submitted = app.transcribe(vended["token"], VIDEO, submit_id)
    resubmitted = app.transcribe(vended["token"], VIDEO, submit_id)  # the app's timeout retry
    assert resubmitted["jobId"] == submitted["jobId"]
    job_id = submitted["jobId"]
    final, seen = app.poll_until_done(job_id)
    assert final["status"] == "completed" and app_text(final) == TRANSCRIPT, seen
    assert final["jobId"] == job_id and final["progress"] == 100
    assert stack.sim.stats()["jobs_created"] == created + 1  # one upstream job, not two
    return job_id, final, before


# -- (a) the latest legacy journey ----------------------------------------------------------
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_latest_legacy_journey_costs_exactly_one_credit(
    store: str, stacks: Callable[[str], Stack], spec_recorder: SpecRecorder
) -> None:
    stack = stacks(store)
    app = stack.app("journey-a", spec_recorder)
    grant(stack.engine, app.user, 3)
    _, _, before = completed_journey(stack, app)
    assert before == 3
    assert app.balance()["balance"] == before - 1
    assert [e["action"] for e in audit_trail(stack.engine, app.user)] == ["grant", "vend"]
    stack.assert_ledger_clean()


# -- (b) upstream restarts after completion ---------------------------------------------------
def test_the_transcript_outlives_an_upstream_restart(
    stacks: Callable[[str], Stack], spec_recorder: SpecRecorder
) -> None:
    stack = stacks("sqlite")
    app = stack.app("journey-b", spec_recorder)
    grant(stack.engine, app.user, 1)
    job_id, final, _ = completed_journey(stack, app)
    # The completion's webhook (and the status fetch it makes) is over before the restart.
    assert stack.tap.delivery_for(job_id).engine_status == 200
    stack.sim.control("/__restart", {})  # upstream restarts: its jobs lived in memory
    before = stack.sim.stats()
    for _ in range(3):
        assert app.poll(job_id) == final  # from the store, the same body
    status = app.call("GET", f"/ttt/status/{job_id}", app.user_jwt())
    assert assert_app_parses_status(status.json()) == final
    after = stack.sim.stats()
    assert after["status_calls"] == before["status_calls"]  # not one call upstream
    assert after["transcribe_calls"] == before["transcribe_calls"]
    upstream_id = stack.tap.delivery_for(job_id).payload["jobId"]
    forgotten = httpx.get(f"{stack.sim.url}/status/{upstream_id}", headers=stack.sim.auth)
    assert forgotten.status_code == 404  # upstream really has no such job any more
    assert app.balance()["balance"] == 0


# -- (c) a failing job is refunded once ---------------------------------------------------
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_failing_job_is_refunded_exactly_once(
    store: str, stacks: Callable[[str], Stack], spec_recorder: SpecRecorder
) -> None:
    stack = stacks(store)
    app = stack.app("journey-c", spec_recorder)
    grant(stack.engine, app.user, 2)
    app.wait_until_ttt("healthy")
    before = app.balance()["balance"]
    vended = app.vend("credit_req_" + secrets.token_hex(12))
    assert vended["balanceAfter"] == before - 1
    job_id = app.transcribe(vended["token"], FAILING, "pluct_" + secrets.token_hex(12))["jobId"]
    final, seen = app.poll_until_done(job_id)
    assert final["status"] == "failed", seen
    assert isinstance(final["error"], str) and final["error"]
    assert final["creditsRefunded"] == 1 and not app_text(final)
    # Upstream's failure webhook reports the same failure again; more polls, both routes.
    assert stack.tap.delivery_for(job_id).engine_status == 200
    for _ in range(4):
        again = app.poll(job_id)
        assert (again["status"], again["error"], again["creditsRefunded"]) == (
            "failed",
            final["error"],
            1,
        )
    status = app.call("GET", f"/ttt/status/{job_id}", vended["token"])
    assert assert_app_parses_status(status.json())["creditsRefunded"] == 1
    assert app.balance()["balance"] == before
    refunds, vends = stack.refunds_and_vends(app.user)
    assert len(refunds) == 1 and len(vends) == 1
    assert refunds[0]["requestId"] == vends[0]["requestId"] == vended["requestId"]
    assert (refunds[0]["delta"], refunds[0]["reason"]) == (1, "job_failed")
    stack.assert_ledger_clean()


# -- (d) upstream not ready -----------------------------------------------------------------
def test_a_not_ready_upstream_costs_nothing_and_the_token_buys_the_job_later(
    stacks: Callable[[str], Stack], spec_recorder: SpecRecorder
) -> None:
    stack = stacks("sqlite")
    app = stack.app("journey-d", spec_recorder)
    grant(stack.engine, app.user, 1)
    app.wait_until_ttt("healthy")
    vended = app.vend("pluct_" + secrets.token_hex(12))
    submit_id = "pluct_" + secrets.token_hex(12)
    created = stack.sim.stats()["jobs_created"]
    stack.sim.control("/__faults", {"notReady": True})
    try:
        refused = app.submit(vended["token"], VIDEO, submit_id)
        assert_app_parses_error(refused, 503, "upstream_unavailable")
        assert refused.headers["retry-after"] == "30"  # the not-ready upstream sends none
        assert app.balance()["balance"] == 0  # the vend's credit, not lost: the token holds it
        app.wait_until_ttt("degraded")  # the app now holds the link instead of submitting
    finally:
        stack.sim.control("/__faults", {})
    app.wait_until_ttt("healthy")
    # The app's retry: the same token and the same clientRequestId buy the job now.
    job_id = app.transcribe(vended["token"], VIDEO, submit_id)["jobId"]
    final, seen = app.poll_until_done(job_id)
    assert app_text(final) == TRANSCRIPT, seen
    assert stack.sim.stats()["jobs_created"] == created + 1
    assert app.balance()["balance"] == 0
    assert [e["action"] for e in audit_trail(stack.engine, app.user)] == ["grant", "vend"]


# -- (e) webhooks on ----------------------------------------------------------------------
@pytest.mark.parametrize("url", [VIDEO, FAILING], ids=["completed", "failed"])
def test_the_webhook_records_the_outcome_before_any_poll_and_only_once(
    url: str, stacks: Callable[[str], Stack], spec_recorder: SpecRecorder
) -> None:
    stack = stacks("sqlite")
    app = stack.app("journey-e", spec_recorder)
    grant(stack.engine, app.user, 1)
    app.wait_until_ttt("healthy")
    vended = app.vend("pluct_" + secrets.token_hex(12))
    job_id = app.transcribe(vended["token"], url, "pluct_" + secrets.token_hex(12))["jobId"]

    # Nobody polls: the simulator settles the job after ~2 s and sends its webhook.
    delivery = stack.tap.delivery_for(job_id)
    assert (delivery.engine_status, json.loads(delivery.engine_answer)) == (200, {"received": True})
    payload = delivery.payload
    signature = delivery.headers["x-tttranscribe-signature"]
    assert sign_8_3(stack.engine.ttt_secret, payload) == signature == payload["signature"]

    # A completed delivery carries no transcript: the engine fetched it once, on receipt.
    # Counted for this job only: earlier tests' unpolled jobs settle and fetch meanwhile.
    def fetches() -> int:
        return int(stack.sim.stats()["paths"].count(f"GET /status/{payload['jobId']}"))

    assert fetches() == (1 if payload["status"] == "completed" else 0)
    calls = fetches()
    first = app.poll(job_id)
    assert fetches() == calls  # answered from the store
    if payload["status"] == "completed":
        assert first["status"] == "completed" and app_text(first) == TRANSCRIPT
        expected_balance, expected_refunds = 0, 0
    else:
        assert (first["status"], first["creditsRefunded"]) == ("failed", 1)
        assert isinstance(first["error"], str) and first["error"]
        expected_balance, expected_refunds = 1, 1

    replayed = post_webhook(app, delivery.body, delivery.headers)  # byte for byte, headers too
    assert_app_parses_error(replayed, 409, "already_processed")
    wrong = sign_8_3("not-the-secret", payload)
    flipped = "failed" if payload["status"] == "completed" else "completed"
    forgeries = [
        ({**payload, "signature": wrong}, wrong),  # the delivery, signed with another key
        ({**payload, "status": flipped}, payload["signature"]),  # its signature, another body
    ]
    for forged, signature in forgeries:
        headers = {**delivery.headers, "x-tttranscribe-signature": signature}
        response = post_webhook(app, json.dumps(forged).encode(), headers)
        assert_app_parses_error(response, 401, "invalid_signature")

    assert app.poll(job_id) == first  # nothing the replay or the forgeries said was taken
    assert stack.tap.count_for(job_id) == 1  # once per job
    assert app.balance()["balance"] == expected_balance
    refunds, _ = stack.refunds_and_vends(app.user)
    assert len(refunds) == expected_refunds
    if expected_refunds:
        stack.assert_ledger_clean()
