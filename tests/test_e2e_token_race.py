"""One vended token fired by many simultaneous submissions buys exactly one upstream job.

Issue 17 (HIGH): the old path checked "used", claimed, called upstream, recorded "used" and
released, so a request that passed the check before the record and claimed after the release
made a second job.  Here a real server (2 workers) on each store, and the simulator as a
separate process, counted through its `GET /__stats`.  `PLUCT_RACE_ROUNDS` raises the rounds
(the issue's proof is 500); the default keeps `nox -s tests` fast.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from engine.local import LocalEngine, free_port
from tests.e2e import grant, recorded_client
from tests.spec_check import SpecRecorder

pytestmark = pytest.mark.server
ROUNDS = int(os.environ.get("PLUCT_RACE_ROUNDS", "120"))
VIDEO = "https://www.tiktok.com/@racer/video/7300000000000000042"


@dataclass(frozen=True)
class SimulatorProcess:
    url: str
    secret: str

    def jobs_created(self) -> int:
        response = httpx.get(
            self.url + "/__stats", headers={"X-Engine-Auth": self.secret}, timeout=10
        )
        response.raise_for_status()
        return int(response.json()["jobs_created"])


@pytest.fixture(scope="module")
def simulator_process() -> Iterator[SimulatorProcess]:
    """`pluct-engine simulator` in its own process, as a deployment would run the upstream."""
    secret = secrets.token_urlsafe(32)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "simulator", "--port", str(port)],
        env={**os.environ, "TTT_SHARED_SECRET": secret},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    simulator = SimulatorProcess(f"http://127.0.0.1:{port}", secret)
    deadline = time.monotonic() + 20
    while True:
        try:
            simulator.jobs_created()
            break
        except httpx.HTTPError:
            assert process.poll() is None, "the simulator exited"
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.05)
    yield simulator
    process.terminate()
    process.wait(timeout=10)


async def _vend_all(client: httpx.AsyncClient, engine: LocalEngine, user: str) -> list[str]:
    headers = engine.user_headers(user)
    tokens = []
    for start in range(0, ROUNDS, 50):
        replies = await asyncio.gather(
            *(
                client.post("/v1/vend-token", headers=headers)
                for _ in range(min(50, ROUNDS - start))
            )
        )
        assert all(r.status_code == 200 for r in replies), replies[0].text
        tokens.extend(str(r.json()["token"]) for r in replies)
    return tokens


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_one_token_fired_concurrently_creates_exactly_one_upstream_job(
    backend: str, simulator_process: SimulatorProcess, spec_recorder: SpecRecorder
) -> None:
    env = {
        "TTT_BASE": simulator_process.url,
        "META_FETCH_BASE": simulator_process.url,
        "TTT_SHARED_SECRET": simulator_process.secret,
    }
    rng = random.Random(17)
    with LocalEngine(redis=backend == "redis", workers=2, rate_limit_per_minute=0, env=env) as eng:
        grant(eng, "racer", ROUNDS)
        before = simulator_process.jobs_created()
        losers: Counter[tuple[int, str]] = Counter()
        doubled = 0
        async with recorded_client(eng, spec_recorder, connections=16) as client:
            tokens = await _vend_all(client, eng, "racer")
            for token in tokens:
                headers = {"Authorization": f"Bearer {token}"}
                fan_out = rng.randint(2, 8)
                replies = await asyncio.gather(
                    *(
                        client.post("/ttt/transcribe", json={"url": VIDEO}, headers=headers)
                        for _ in range(fan_out)
                    )
                )
                accepted = [r for r in replies if r.status_code == 202]
                doubled += len(accepted) > 1
                losers.update(
                    (r.status_code, str(r.json().get("code"))) for r in replies if r not in accepted
                )
        created = simulator_process.jobs_created() - before
        verify = eng.ledger_verify()
    print(f"{backend}: {ROUNDS} rounds, upstream jobs {created}, losers {dict(losers)}")
    assert (created, doubled) == (ROUNDS, 0), f"rounds with two jobs: {doubled}"
    assert set(losers) <= {(401, "token_used"), (409, "token_in_use")}, losers
    assert verify.returncode == 0, verify.stdout + verify.stderr
