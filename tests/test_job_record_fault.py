"""A store failure after upstream accepted a job does not lose it (issue 17, LOW).

The user paid and the job runs upstream: the record is retried inline, and if the store stays
down the job is logged as an audited `job_record_failed` event and recorded in the background
once the store is back; the client gets its job id either way.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from litestar.testing import TestClient

import engine.http.app as app_module
from engine import Settings, create_app
from engine.store import Store, StoreUnavailable, store_from_url
from engine.upstream.sim_server import BackgroundSimulator
from tests.conftest import ADMIN, bearer

VIDEO = "https://www.tiktok.com/@creator/video/7300000000000000201"


class FailingAccepts:
    """The real store, whose next `failures` job acceptances fail as if it were down."""

    def __init__(self, store: Store, failures: int) -> None:
        self._store = store
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def accept_job(self, *args: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("injected: the store went away")
        return await self._store.accept_job(*args)


def _journey(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, failures: int
) -> tuple[TestClient, str]:  # type: ignore[type-arg]
    store = FailingAccepts(store_from_url(settings.store_url), failures)
    monkeypatch.setattr(app_module, "store_from_url", lambda url: store)
    client = TestClient(create_app(settings)).__enter__()
    assert (
        client.post(
            "/v1/credits/add", json={"userId": "rec", "amount": 1}, headers=ADMIN
        ).status_code
        == 200
    )
    token = client.post("/v1/vend-token", headers=bearer("rec")).json()["token"]
    submitted = client.post(
        "/ttt/transcribe", json={"url": VIDEO}, headers={"Authorization": f"Bearer {token}"}
    )
    assert submitted.status_code == 202, submitted.text
    return client, str(submitted.json()["jobId"])


def _status(client: TestClient, job_id: str) -> dict[str, Any]:  # type: ignore[type-arg]
    response = client.get(f"/ttt/status/{job_id}", headers=bearer("rec"))
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_brief_store_failure_is_retried_inline(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, fresh_simulator: BackgroundSimulator
) -> None:
    client, job_id = _journey(settings, monkeypatch, failures=2)
    try:
        assert _status(client, job_id)["progress"] == 15  # recorded: upstream is being polled
    finally:
        client.__exit__(None, None, None)
    assert fresh_simulator.app.stats.jobs_created == 1


def test_a_lasting_store_failure_is_audited_and_recorded_later(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    fresh_simulator: BackgroundSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="engine.jobs")
    client, job_id = _journey(settings, monkeypatch, failures=5)
    try:
        failed = [r for r in caplog.records if r.getMessage() == "job_record_failed"]
        assert len(failed) == 1 and failed[0].jobId == job_id  # type: ignore[attr-defined]
        assert _status(client, job_id)["status"] == "queued"  # its submitted state, not a 404
        deadline = time.monotonic() + 20
        while _status(client, job_id)["progress"] == 0:
            assert time.monotonic() < deadline, "the job was never recorded"
            time.sleep(0.1)
    finally:
        client.__exit__(None, None, None)
    assert any(r.getMessage() == "job_record_recovered" for r in caplog.records)
    assert fresh_simulator.app.stats.jobs_created == 1
