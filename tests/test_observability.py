"""Issue 20: request ids, the access log, log lines and `/metrics`, against real servers.

The access log is read from the server's own output (`LocalEngine.log_path`), the metrics
through `prometheus_client.parser`, as an operator and Prometheus would see them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from engine import Settings, create_app
from engine.local import LocalEngine, free_port
from engine.observability.context import begin, request_id_from
from engine.observability.logs import AccessLog, EngineFormatter
from engine.store import Store, store_from_url
from engine.store.records import Context, GrantOrder

HEX_ID = re.compile(r"[0-9a-f]{32}")
METRICS_TOKEN = "metrics-token-for-tests-0123456789"


def log_lines(engine: LocalEngine) -> list[str]:
    return engine.log_path.read_text(encoding="utf-8").splitlines()


def access_entries(engine: LocalEngine) -> list[dict[str, object]]:
    entries = []
    for line in log_lines(engine):
        if line.startswith("{"):
            parsed = json.loads(line)
            if parsed.get("logger") == "engine.access":
                entries.append(parsed)
    return entries


def wait_for(condition: object, what: str, seconds: float = 15.0) -> None:
    """Poll a condition with a deadline (access lines are written in batches, ~50 ms late)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def json_engine() -> Iterator[LocalEngine]:
    with LocalEngine(env={"LOG_FORMAT": "json", "METRICS_TOKEN": METRICS_TOKEN}) as engine:
        yield engine


@pytest.mark.server
def test_one_request_id_in_header_envelope_audit_and_access_line(json_engine: LocalEngine) -> None:
    engine = json_engine
    engine.client.post(
        "/v1/credits/add", headers=engine.admin_headers, json={"userId": "rid-ann", "amount": 1}
    )
    user = engine.user_headers("rid-ann")
    charged = engine.client.post(
        "/v1/vend-token", headers={**user, "X-Request-Id": "trace.charge-1_A"}, json={}
    )
    refused = engine.client.post(
        "/v1/vend-token", headers={**user, "X-Request-Id": "trace.refuse-2"}, json={}
    )
    assert charged.status_code == 200 and refused.status_code == 402
    assert charged.headers["x-request-id"] == "trace.charge-1_A"
    assert refused.headers["x-request-id"] == refused.json()["requestId"] == "trace.refuse-2"

    trail = engine.client.get(
        "/v1/admin/audit", params={"userId": "rid-ann"}, headers=engine.admin_headers
    ).json()["entries"]
    by_action = {entry["action"]: entry for entry in trail}
    assert by_action["vend"]["httpRequestId"] == "trace.charge-1_A"
    assert by_action["vend_refused"]["httpRequestId"] == "trace.refuse-2"
    # The vend keeps its own ledger key; the HTTP id never becomes one.
    assert by_action["vend"]["requestId"] == charged.json()["requestId"] != "trace.charge-1_A"

    wait_for(
        lambda: (
            {"trace.charge-1_A", "trace.refuse-2"}
            <= {e["requestId"] for e in access_entries(engine)}
        ),
        "both access lines",
    )
    lines = {e["requestId"]: e for e in access_entries(engine)}
    line = lines["trace.charge-1_A"]
    assert line["method"] == "POST" and line["route"] == "/v1/vend-token"
    assert line["status"] == 200 and line["userId"] == "rid-ann"
    assert isinstance(line["durationMs"], float) and line["durationMs"] >= 0
    assert lines["trace.refuse-2"]["status"] == 402


@pytest.mark.server
def test_an_unacceptable_incoming_request_id_is_replaced(json_engine: LocalEngine) -> None:
    for bad in ("x" * 65, "has space", "semi;colon", "ünï"):
        response = json_engine.client.get("/nope", headers={"X-Request-Id": bad.encode("utf-8")})
        assert response.status_code == 404
        assert HEX_ID.fullmatch(response.headers["x-request-id"])
        assert response.json()["requestId"] == response.headers["x-request-id"]
    kept = json_engine.client.get("/health", headers={"X-Request-Id": "a" * 64})
    assert kept.headers["x-request-id"] == "a" * 64


@pytest.mark.server
def test_no_raw_user_text_reaches_a_log_line() -> None:
    """Issue 17, log injection: `%0A` in a URL, a path or a user id never starts a line."""
    with LocalEngine() as engine:  # the human format
        engine.client.get("/meta", params={"url": "https://www.tiktok.com/\nINJECTED-URL"})
        engine.client.get("/no/such%0AINJECTED-PATH")
        token = engine.mint_user("carol\nINJECTED-USER")
        engine.client.get("/v1/credits/balance", headers={"Authorization": f"Bearer {token}"})
        engine.client.get(
            "/v1/credits/balance", headers={**engine.user_headers("carol"), "X-Request-Id": "last"}
        )
        wait_for(lambda: any("request_id=last" in line for line in log_lines(engine)), "lines")
        lines = log_lines(engine)
    engine_lines = [line for line in lines if " engine." in line]
    assert len(engine_lines) >= 5
    for line in engine_lines:
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ engine\.", line), line
    assert not any("INJECTED" in line for line in lines)
    assert any("/v1/credits/balance 200" in line and 'user_id="carol"' in line for line in lines)
    assert any(" unmatched 404 " in line for line in lines)


@pytest.mark.server
def test_metrics_need_the_token_and_move_after_a_vend() -> None:
    """Two workers: multiprocess mode; a scrape reads every worker's counts."""
    with LocalEngine(workers=2, env={"METRICS_TOKEN": METRICS_TOKEN}) as engine:
        assert engine.client.get("/metrics").status_code == 401
        wrong = engine.client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "Authorization: Bearer" in wrong.json()["guidance"]
        scrape = {"Authorization": f"Bearer {METRICS_TOKEN}"}

        def charged() -> float:
            text = engine.client.get("/metrics", headers=scrape).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "pluct_vends_total" and sample.labels == {
                        "outcome": "charged"
                    }:
                        return sample.value
            return 0.0

        before = charged()
        engine.client.post(
            "/v1/credits/add", headers=engine.admin_headers, json={"userId": "m-ann", "amount": 2}
        )
        for _ in range(2):
            assert engine.client.post(
                "/v1/vend-token", headers=engine.user_headers("m-ann"), json={}
            ).is_success
        wait_for(lambda: charged() == before + 2, "the vends in pluct_vends_total")
        text = engine.client.get("/metrics", headers=scrape).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in (
        "pluct_http_requests",
        "pluct_http_request_duration_seconds",
        "pluct_store_operation_duration_seconds",
        "pluct_refusals",
        "pluct_upstream_breaker_state",
    ):
        assert name in families, name
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["pluct_http_requests"].samples
        if s.name == "pluct_http_requests_total"
    }
    assert requests[("/v1/vend-token", "200")] == 2
    buckets = [
        s
        for s in families["pluct_http_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["route"] == "/v1/vend-token"
    ]
    assert max(s.value for s in buckets if s.labels["le"] == "+Inf") == 2
    spends = [
        s
        for s in families["pluct_store_operation_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["operation"] == "spend"
    ]
    assert sum(s.value for s in spends) == 2


def test_metrics_are_absent_without_a_token(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.get("/metrics", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 404 and response.json()["code"] == "route_not_found"


def test_every_log_line_of_a_request_carries_its_id() -> None:
    record = logging.LogRecord("engine.http", logging.WARNING, __file__, 1, "a\nb %s", ("c",), None)
    begin(request_id_from(b"req-7"))
    human = EngineFormatter(json_lines=False).format(record)
    assert human.endswith("engine.http a\\nb c request_id=req-7") and "\n" not in human
    as_json = json.loads(EngineFormatter(json_lines=True).format(record))
    assert as_json["requestId"] == "req-7" and as_json["msg"] == "a\nb c"


def test_access_line_escapes_what_a_user_chose() -> None:
    line = AccessLog(json_lines=False).line("GET\n", "/meta", 200, 1.0, 'eve"\nx', "rid")
    assert "\n" not in line and '"GET\\n"' in line and 'user_id="eve\\"\\nx"' in line


async def _entry_ids(store: Store) -> list[str]:
    order = GrantOrder("h-ann", 1, "g1", "t", None, Context(http_request_id="http-1"), time.time())
    await store.grant(order)
    return [entry.http_request_id for entry in await store.audit("h-ann", 10, 0)]


async def test_audit_entries_keep_the_http_request_id(store: Store) -> None:
    assert await _entry_ids(store) == ["http-1"]


def test_sqlite_ledger_from_before_http_request_ids_reads_and_upgrades(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, action TEXT NOT NULL,"
        " delta INTEGER NOT NULL, balance_after INTEGER NOT NULL, request_id TEXT NOT NULL,"
        " ip TEXT NOT NULL, user_agent TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',"
        " at TEXT NOT NULL)"
    )
    conn.execute(
        "INSERT INTO ledger VALUES (1, 'old', 'grant', 1, 1, 'g0', '', '', 'x',"
        " '2026-01-01T00:00:00.000Z')"
    )
    conn.execute(
        "CREATE TABLE accounts (user_id TEXT PRIMARY KEY, balance INTEGER NOT NULL,"
        " updated_at TEXT NOT NULL) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO accounts VALUES ('old', 1, '2026-01-01T00:00:00.000Z')")
    conn.commit()
    conn.close()

    async def scenario() -> list[str]:
        store = store_from_url(f"sqlite:///{path}")
        await store.open()
        try:
            old = [e.http_request_id for e in await store.audit("old", 10, 0)]
            return old + await _entry_ids(store)
        finally:
            await store.close()

    assert asyncio.run(scenario()) == ["", "http-1"]


@pytest.mark.server
def test_metrics_port_serves_every_worker_on_loopback() -> None:
    port = free_port()
    with LocalEngine(env={"METRICS_PORT": str(port)}) as engine:
        assert engine.client.get("/metrics").status_code == 404  # no token: not on the API port
        engine.client.get("/health/services")

        def served() -> bool:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return any(
                sample.labels.get("route") == "/health/services"
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "pluct_http_requests_total"
            )

        wait_for(served, "the request on the metrics port")


@pytest.mark.server
def test_a_head_request_is_logged_as_head_on_its_route(json_engine: LocalEngine) -> None:
    response = json_engine.client.head("/health", headers={"X-Request-Id": "head-probe-1"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "head-probe-1"
    wait_for(
        lambda: "head-probe-1" in {e["requestId"] for e in access_entries(json_engine)}, "line"
    )
    line = next(e for e in access_entries(json_engine) if e["requestId"] == "head-probe-1")
    assert (line["method"], line["route"], line["status"]) == ("HEAD", "/health", 200)
