"""Shared fixtures: real SQLite files, a real redis-server, real servers, spec checking."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from litestar.testing import TestClient

from engine import Settings, create_app
from engine.domain.tokens import TRANSCRIBE_SCOPE, TokenAuthority
from engine.local import RedisClusterServers, RedisServer
from engine.store import Store, store_from_url
from engine.upstream.sim_server import BackgroundSimulator
from tests.spec_check import SpecRecorder

JWT_SECRET = "test-jwt-secret-0123456789abcdef0123"
ADMIN_KEY = "test-admin-key-0123456789abcdef01234"
TTT_SECRET = "test-ttt-secret-0123456789abcdef0123"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server; a missing binary is an error, never a skip."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """Three real redis-server primaries joined into a cluster by redis-cli."""
    cluster = RedisClusterServers()
    cluster.start()
    yield cluster
    cluster.close()


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    if request.param == "redis-cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return cluster.url
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = store_from_url(store_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture(scope="session")
def simulator() -> Iterator[BackgroundSimulator]:
    sim = BackgroundSimulator(TTT_SECRET).start()
    yield sim
    sim.stop()


@pytest.fixture
def fresh_simulator(simulator: BackgroundSimulator) -> BackgroundSimulator:
    """The session simulator with faults cleared, jobs forgotten and counters reset."""
    from engine.upstream.sim_state import Faults, Stats

    simulator.app.faults = Faults()
    simulator.app.stats = Stats()
    simulator.app.jobs.clear()
    return simulator


def make_settings(
    store_url: str, ttt_base: str = "http://127.0.0.1:9", **overrides: object
) -> Settings:
    env = {
        "ENGINE_JWT_SECRET": JWT_SECRET,
        "ENGINE_ADMIN_KEY": ADMIN_KEY,
        "TTT_SHARED_SECRET": TTT_SECRET,
        "ENGINE_STORE_URL": store_url,
        "TTT_BASE": ttt_base,
        "META_FETCH_BASE": ttt_base,
        # In-process apps stay quiet; the access log is tested against real servers.
        "ACCESS_LOG": "off",
    }
    return Settings.from_env(env).with_overrides(**overrides)


@pytest.fixture
def spec_recorder() -> Iterator[SpecRecorder]:
    recorder = SpecRecorder()
    yield recorder
    assert recorder.problems == [], "responses that do not match spec/openapi.yaml"


@pytest.fixture
def settings(tmp_path: Path, fresh_simulator: BackgroundSimulator) -> Settings:
    return make_settings(f"sqlite:///{tmp_path / 'engine.db'}", fresh_simulator.url)


@pytest.fixture
def api(settings: Settings, spec_recorder: SpecRecorder) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """The app in-process on a real SQLite file, every response checked against the spec."""
    with TestClient(create_app(settings)) as client:
        client.event_hooks = {"request": [], "response": [spec_recorder.sync_hook()]}
        yield client


def user_token(sub: str, scope: str = TRANSCRIBE_SCOPE, ttl: int = 900) -> str:
    return TokenAuthority(make_settings("sqlite:///unused.db")).mint_user(
        sub, scope, ttl, time.time()
    )


def bearer(sub: str, scope: str = TRANSCRIBE_SCOPE) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token(sub, scope)}"}


ADMIN = {"X-API-Key": ADMIN_KEY}


def async_client(
    base_url: str, recorder: SpecRecorder, connections: int = 300
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=60.0,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        event_hooks={"response": [recorder.async_hook()]},
    )
