"""Issue 17's store-facing items, on SQLite and on Redis: each a clear answer, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from engine import create_app
from engine.upstream.simulator import BackgroundSimulator
from tests.conftest import bearer, make_settings

VIDEO = "https://www.tiktok.com/@creator/video/7300000000000000001"


@pytest.fixture(params=["sqlite", "redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path / 'engine.db'}"


def _client(url: str, simulator: BackgroundSimulator, **overrides: object) -> TestClient:  # type: ignore[type-arg]
    return TestClient(create_app(make_settings(url, simulator.url, **overrides)))


@pytest.fixture
def limited(backend_url: str, fresh_simulator: BackgroundSimulator) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with _client(backend_url, fresh_simulator, rate_limit_per_minute=1) as client:
        yield client


def test_a_user_named_like_an_address_has_a_window_of_its_own(limited: TestClient) -> None:  # type: ignore[type-arg]
    # TestClient's requests come from the address "testclient".
    impostor = bearer("ip:testclient")
    assert limited.get("/v1/credits/balance", headers=impostor).status_code == 200
    assert limited.get("/v1/credits/balance", headers=impostor).status_code == 429
    assert limited.get("/meta", params={"url": VIDEO}).status_code == 200
    assert limited.get("/meta", params={"url": VIDEO}).status_code == 429
    assert limited.get("/v1/credits/balance", headers=bearer("testclient")).status_code == 200
