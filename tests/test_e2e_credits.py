"""Credits against a real server process: races, idempotency, crashes, several workers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from engine.local import LocalEngine, RedisServer
from tests.e2e import Storm, audit_trail, balance_of, fire, grant, kill9, recorded_client, statuses
from tests.spec_check import SpecRecorder

pytestmark = pytest.mark.server

DEPLOYMENTS = [("sqlite", 1), ("sqlite", 2), ("redis", 1), ("redis", 2), ("redis-cluster", 2)]


@pytest.fixture(params=DEPLOYMENTS, ids=[f"{s}-{w}w" for s, w in DEPLOYMENTS])
def engine(request: pytest.FixtureRequest) -> Iterator[LocalEngine]:
    store, workers = request.param
    url = None
    if store == "redis":
        url = str(request.getfixturevalue("redis_url"))
    elif store == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        url = cluster.url
    with LocalEngine(store_url=url, workers=workers) as running:
        yield running


async def test_200_concurrent_vends_on_a_balance_of_50(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    grant(engine, "alice", 50)
    headers = engine.user_headers("alice")
    async with recorded_client(engine, spec_recorder) as client:
        responses = await fire(client, 200, lambda i: {"headers": headers})
    counts = statuses(responses)
    assert counts[200] == 50
    assert counts[402] + counts[429] == 150 and set(counts) <= {200, 402, 429}
    tokens = {r.json()["token"] for r in responses if r.status_code == 200}
    assert len(tokens) == 50
    assert balance_of(engine, "alice") == 0
    trail = audit_trail(engine, "alice")
    assert sorted(str(e["action"]) for e in trail).count("vend") == 50
    actions = [str(e["action"]) for e in trail]
    # One grant and one entry per attempt, except that past the rate limit only a window's
    # first refusal is kept (the 429s may span two windows).
    assert actions.count("vend") + actions.count("vend_refused") == 50 + counts[402]
    if counts[429]:
        assert 1 <= actions.count("vend_rate_limited") <= 2
    assert len(trail) == 1 + 50 + counts[402] + actions.count("vend_rate_limited")
    verdict = engine.ledger_verify()
    assert verdict.returncode == 0, verdict.stdout


async def test_one_key_fired_50_times_charges_once(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    grant(engine, "bob", 5)
    headers = engine.user_headers("bob")
    async with recorded_client(engine, spec_recorder) as client:
        responses = await fire(
            client, 50, lambda i: {"headers": headers, "json": {"clientRequestId": "one-key"}}
        )
    assert statuses(responses) == {200: 50}
    assert len({r.json()["token"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 49
    assert engine.client.get("/v1/credits/balance", headers=headers).json()["balance"] == 4


async def test_another_users_key_gets_nothing(
    engine: LocalEngine, spec_recorder: SpecRecorder
) -> None:
    grant(engine, "carol", 1)
    async with recorded_client(engine, spec_recorder) as client:
        carol = await client.post(
            "/v1/vend-token", json={"clientRequestId": "k-1"}, headers=engine.user_headers("carol")
        )
        dave = await asyncio.gather(
            *(
                client.post(
                    "/v1/vend-token",
                    json={"clientRequestId": "k-1"},
                    headers=engine.user_headers("dave"),
                )
                for _ in range(10)
            )
        )
    assert carol.status_code == 200
    assert statuses(dave) == {402: 10}
    assert all(carol.json()["token"] not in r.text for r in dave)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_kill9_mid_storm_loses_no_acknowledged_vend(
    store: str, request: pytest.FixtureRequest, spec_recorder: SpecRecorder
) -> None:
    url = str(request.getfixturevalue("redis_url")) if store == "redis" else None
    with LocalEngine(store_url=url, rate_limit_per_minute=0) as engine:
        grant(engine, "erin", 100_000)
        async with recorded_client(engine, spec_recorder) as client:
            storm = Storm(client, engine.user_headers("erin"))
            storm.start()
            await storm.reach(200)
            engine.kill()
            await storm.finish()
        engine.start()
        vends = {e["requestId"] for e in audit_trail(engine, "erin") if e["action"] == "vend"}
        assert set(storm.acknowledged) <= vends
        assert len(storm.acknowledged) >= 200
        balance = engine.client.get("/v1/credits/balance", headers=engine.user_headers("erin"))
        assert balance.json()["balance"] == 100_000 - len(vends)
        verdict = engine.ledger_verify()
        assert verdict.returncode == 0, verdict.stdout


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_kill9_of_one_worker_loses_no_acknowledged_vend(
    store: str, request: pytest.FixtureRequest, spec_recorder: SpecRecorder
) -> None:
    url = str(request.getfixturevalue("redis_url")) if store == "redis" else None
    with LocalEngine(store_url=url, workers=2, rate_limit_per_minute=0) as engine:
        grant(engine, "fay", 100_000)
        async with recorded_client(engine, spec_recorder) as client:
            storm = Storm(client, engine.user_headers("fay"))
            storm.start()
            await storm.reach(150)
            kill9(engine.worker_pids()[0])
            await storm.reach(len(storm.acknowledged) + 150)
            await storm.finish()
        vends = {e["requestId"] for e in audit_trail(engine, "fay") if e["action"] == "vend"}
        assert set(storm.acknowledged) <= vends
        verdict = engine.ledger_verify()
        assert verdict.returncode == 0, verdict.stdout


async def test_redis_restart_mid_storm_gives_503s_not_wrong_balances(
    spec_recorder: SpecRecorder,
) -> None:
    with (
        RedisServer() as redis_server,
        LocalEngine(store_url=redis_server.url, workers=2, rate_limit_per_minute=0) as engine,
    ):
        grant(engine, "gus", 100_000)
        async with recorded_client(engine, spec_recorder) as client:
            storm = Storm(client, engine.user_headers("gus"))
            storm.start()
            await storm.reach(100)
            await asyncio.to_thread(redis_server.restart)
            await storm.reach(len(storm.acknowledged) + 100)
            await storm.finish()
        assert set(storm.errors) <= {"503"}, storm.errors
        vends = {e["requestId"] for e in audit_trail(engine, "gus") if e["action"] == "vend"}
        assert set(storm.acknowledged) <= vends
        balance = engine.client.get(
            "/v1/credits/balance", headers=engine.user_headers("gus")
        ).json()
        assert balance["balance"] == 100_000 - len(vends)
        verdict = engine.ledger_verify()
        assert verdict.returncode == 0, verdict.stdout
