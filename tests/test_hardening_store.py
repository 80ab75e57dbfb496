"""Issue 17's store-facing items, on SQLite and on Redis: each a clear answer, never a 500."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from litestar.testing import TestClient
from redis.exceptions import ResponseError

from engine import create_app
from engine.domain.credits import REFUSALS_KEPT_PER_MINUTE
from engine.domain.ledger import verify
from engine.local import RedisServer
from engine.store import Store, store_from_url
from engine.store.protocol import StoreUnavailable
from engine.store.records import (
    UNFUNDED_REFUSALS_KEPT_PER_MINUTE,
    Context,
    GrantOrder,
    RateWindow,
    RefusalOrder,
    SpendOutcome,
)
from engine.store.redis import RedisStore
from engine.store.sqlite import SQLiteStore
from engine.upstream.sim_server import BackgroundSimulator
from tests.conftest import ADMIN, bearer, make_settings
from tests.spec_check import SpecRecorder
from tests.test_store_contract import vend

VIDEO = "https://www.tiktok.com/@creator/video/7300000000000000001"


@pytest.fixture(params=["sqlite", "redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path / 'engine.db'}"


def _client(  # type: ignore[type-arg]
    url: str,
    simulator: BackgroundSimulator,
    recorder: SpecRecorder | None = None,
    **overrides: object,
) -> TestClient:
    client = TestClient(create_app(make_settings(url, simulator.url, **overrides)))
    if recorder is not None:
        client.event_hooks = {"request": [], "response": [recorder.sync_hook()]}
    return client


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


# -- a Redis that answers but refuses writes -------------------------------------------------
def test_redis_out_of_memory_is_503_and_health_says_degraded(
    fresh_simulator: BackgroundSimulator, spec_recorder: SpecRecorder
) -> None:
    with RedisServer() as server, _client(server.url, fresh_simulator, spec_recorder) as client:
        granted = client.post("/v1/credits/add", json={"userId": "ann", "amount": 2}, headers=ADMIN)
        assert granted.status_code == 200
        admin = redis.Redis.from_url(server.url)
        admin.config_set("maxmemory", 1)  # every write is now refused with OOM
        try:
            for attempt in (
                lambda: client.post("/v1/vend-token", headers=bearer("ann")),
                lambda: client.post(
                    "/v1/credits/add", json={"userId": "ann", "amount": 1}, headers=ADMIN
                ),
            ):
                refused = attempt()
                assert refused.status_code == 503, refused.text
                assert refused.json()["code"] == "store_unavailable"
                assert int(refused.headers["retry-after"]) >= 1
            health = client.get("/health")
            assert health.status_code == 503
            body = health.json()
            assert (body["ok"], body["status"]) == (False, "degraded")
            assert body["connectivity"]["store"] == "degraded"
            assert "OOM" in body["store"]["problem"]
        finally:
            admin.config_set("maxmemory", 0)
            admin.close()
        assert client.get("/health").status_code == 200
        assert client.post("/v1/vend-token", headers=bearer("ann")).status_code == 200
        assert client.get("/v1/credits/balance", headers=bearer("ann")).json()["balance"] == 1


async def test_misconf_is_store_unavailable_and_degraded() -> None:
    """MISCONF (a failed snapshot or AOF write) needs a broken disk to provoke for real; the
    reply it produces is classified here."""
    store = RedisStore("redis://127.0.0.1:9/0")

    async def misconf() -> None:
        raise ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's ...")

    with pytest.raises(StoreUnavailable):
        await store._guard(misconf())
    assert store.degraded.startswith("redis refuses writes: MISCONF")


# -- a corrupt SQLite file -------------------------------------------------------------------
async def _engine_file(path: Path) -> int:
    """An engine file with 300 accounts; the number of bytes its empty schema took."""
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    schema_bytes = (await asyncio.to_thread(path.stat)).st_size
    store = SQLiteStore(path)
    await store.open()
    for index in range(300):
        await store.grant(GrantOrder(f"user-{index}", 1, f"g{index}", "seed", None, Context(), 1e9))
    await store.close()
    return schema_bytes


async def test_a_corrupt_sqlite_file_is_503_and_health_says_so(
    tmp_path: Path, fresh_simulator: BackgroundSimulator, spec_recorder: SpecRecorder
) -> None:
    path = tmp_path / "engine.db"
    schema_bytes = await _engine_file(path)
    data = bytearray(path.read_bytes())
    assert len(data) > schema_bytes
    data[schema_bytes:] = bytes([0xA5]) * (len(data) - schema_bytes)  # the pages data added
    path.write_bytes(bytes(data))
    with _client(f"sqlite:///{path}", fresh_simulator, spec_recorder) as client:
        balance = client.get("/v1/credits/balance", headers=bearer("user-7"))
        assert balance.status_code == 503, balance.text
        assert balance.json()["code"] == "store_unavailable"
        vend = client.post("/v1/vend-token", headers=bearer("user-7"))
        assert vend.status_code == 503, vend.text
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["connectivity"]["store"] == "degraded"


def _serve(url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ENGINE_JWT_SECRET": "j" * 32,
        "ENGINE_ADMIN_KEY": "a" * 32,
        "TTT_SHARED_SECRET": "t" * 32,
    }
    return subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--port", "9", "--store", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = path.read_bytes()
    done = _serve(f"sqlite:///{path}")
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert str(path) in last and "not a usable SQLite database" in last
    assert "Traceback" not in done.stderr
    assert path.read_bytes() == before


def test_serve_refuses_another_applications_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    conn.close()
    done = _serve(f"sqlite:///{path}")
    assert done.returncode == 2, done.stderr
    assert "not an engine one" in done.stderr.strip().splitlines()[-1]


# -- 403 refusals are audited ----------------------------------------------------------------
@pytest.fixture
def app_client(
    backend_url: str, fresh_simulator: BackgroundSimulator, spec_recorder: SpecRecorder
) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with _client(backend_url, fresh_simulator, spec_recorder) as client:
        yield client


def _trail(client: TestClient, user_id: str) -> list[dict[str, object]]:  # type: ignore[type-arg]
    audit = client.get("/v1/admin/audit", params={"userId": user_id}, headers=ADMIN)
    assert audit.status_code == 200
    entries: list[dict[str, object]] = audit.json()["entries"]
    return entries


def test_each_403_vend_refusal_leaves_exactly_one_entry(app_client: TestClient) -> None:  # type: ignore[type-arg]
    app_client.post("/v1/credits/add", json={"userId": "ann", "amount": 1}, headers=ADMIN)
    mismatch = app_client.post("/v1/vend-token", json={"userId": "bob"}, headers=bearer("ann"))
    assert (mismatch.status_code, mismatch.json()["code"]) == (403, "user_mismatch")
    no_scope = app_client.post("/v1/vend-token", headers=bearer("ann", scope="profile"))
    assert (no_scope.status_code, no_scope.json()["code"]) == (403, "insufficient_scope")
    refused = [e for e in _trail(app_client, "ann") if e["action"] == "vend_refused"]
    assert [(e["reason"], e["delta"], e["balanceAfter"]) for e in refused] == [
        ("user_mismatch", 0, 1),
        ("insufficient_scope", 0, 1),
    ]
    assert _trail(app_client, "bob") == []
    assert app_client.get("/v1/credits/balance", headers=bearer("ann")).json()["balance"] == 1


async def test_record_refusal_on_the_store(backend_url: str) -> None:
    store = store_from_url(backend_url)
    await store.open()
    try:
        await store.grant(GrantOrder("ann", 2, "g1", "seed", None, Context(), 1e9))
        entry = await store.record_refusal(
            RefusalOrder("ann", "req_x", "user_mismatch", Context("1.2.3.4", "ua"), 1e9 + 1)
        )
        assert (entry.action, entry.delta, entry.balance_after) == ("vend_refused", 0, 2)
        assert (entry.request_id, entry.reason, entry.ip) == ("req_x", "user_mismatch", "1.2.3.4")
        assert await store.audit("ann", 10, 0) == [
            (await store.audit("ann", 10, 0))[0],
            entry,
        ]
        assert (await verify(store)).ok
    finally:
        await store.close()


# -- refusals are bounded ----------------------------------------------------------------------
@pytest.fixture
async def opened(backend_url: str) -> AsyncIterator[Store]:
    store = store_from_url(backend_url)
    await store.open()
    yield store
    await store.close()


async def _rows(store: Store, users: list[str]) -> int:
    return sum([len(await store.audit(user, 500, 0)) for user in users])


async def test_a_flood_of_fresh_user_ids_leaves_a_bounded_ledger(opened: Store) -> None:
    now = 60 * 30_000_000 + 5.0  # one minute, whatever the clock says
    flood = 3 * UNFUNDED_REFUSALS_KEPT_PER_MINUTE
    outcomes = await asyncio.gather(
        *(opened.spend(vend(f"fresh-{i}", f"r{i}", now=now)) for i in range(flood // 2)),
        *(
            opened.record_refusal(
                RefusalOrder(f"minted-{i}", f"q{i}", "user_mismatch", Context(), now)
            )
            for i in range(flood // 2)
        ),
    )
    assert all(o is None or not isinstance(o, BaseException) for o in outcomes)
    spends = [o for o in outcomes if isinstance(o, SpendOutcome)]
    assert {o.status for o in spends} == {"insufficient"}
    half = range(flood // 2)
    rows = await _rows(opened, [f"fresh-{i}" for i in half] + [f"minted-{i}" for i in half])
    assert rows <= 2 * UNFUNDED_REFUSALS_KEPT_PER_MINUTE  # two reasons, each capped
    tally = await opened.refusal_tally(int(now // 60))
    assert tally == {"insufficient_credits": flood // 2, "user_mismatch": flood // 2}
    assert (await verify(opened)).ok


async def test_a_funded_users_refusals_keep_their_entries(opened: Store) -> None:
    await opened.grant(GrantOrder("ann", 1, "g1", "seed", None, Context(), time.time()))
    for i in range(3):
        assert (await opened.spend(vend("ann", f"r{i}"))).status in {"charged", "insufficient"}
    actions = [e.action for e in await opened.audit("ann", 10, 0)]
    assert actions == ["grant", "vend", "vend_refused", "vend_refused"]


async def test_past_the_rate_limit_only_the_windows_first_refusal_is_kept(opened: Store) -> None:
    await opened.grant(GrantOrder("ann", 100, "g1", "seed", None, Context(), time.time()))
    now = 60 * 30_000_000 + 1.0
    rate = RateWindow("ann", 2, 60)
    statuses = [
        (await opened.spend(vend("ann", f"r{i}", now=now + i / 100, rate=rate))).status
        for i in range(40)
    ]
    assert statuses == ["charged"] * 2 + ["rate_limited"] * 38
    actions = [e.action for e in await opened.audit("ann", 100, 0)]
    assert actions == ["grant", "vend", "vend", "vend_rate_limited"]
    assert (await verify(opened)).ok


def test_a_stream_of_403s_keeps_a_bounded_trail_and_no_rate_window(app_client: TestClient) -> None:  # type: ignore[type-arg]
    app_client.post("/v1/credits/add", json={"userId": "ann", "amount": 1}, headers=ADMIN)
    for _ in range(REFUSALS_KEPT_PER_MINUTE + 15):
        refused = app_client.post("/v1/vend-token", json={"userId": "bob"}, headers=bearer("ann"))
        assert refused.status_code == 403
    refusals = [e for e in _trail(app_client, "ann") if e["action"] == "vend_refused"]
    assert 1 <= len(refusals) <= 2 * REFUSALS_KEPT_PER_MINUTE  # two minutes at most
    balance = app_client.get("/v1/credits/balance", headers=bearer("ann"))
    assert balance.status_code == 200 and balance.json()["balance"] == 1
