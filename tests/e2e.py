"""Helpers for tests that drive a real engine process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from engine.local import LocalEngine
from tests.spec_check import SpecRecorder

DEADLINE_SECONDS = 15.0  # issue 18's "within 15 s"; also the bound of every wait below


def recorded_client(
    engine: LocalEngine, recorder: SpecRecorder, connections: int = 300
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=engine.url,
        timeout=60.0,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        event_hooks={"response": [recorder.async_hook()]},
    )


def grant(engine: LocalEngine, user: str, amount: int) -> None:
    response = engine.client.post(
        "/v1/credits/add", json={"userId": user, "amount": amount}, headers=engine.admin_headers
    )
    response.raise_for_status()


def audit_trail(engine: LocalEngine, user: str) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = []
    after = 0
    while True:
        page = engine.client.get(
            "/v1/admin/audit",
            params={"userId": user, "after": after, "limit": 500},
            headers=engine.admin_headers,
        ).json()
        entries.extend(page["entries"])
        if "nextAfter" not in page:
            return entries
        after = page["nextAfter"]


async def fire(
    client: httpx.AsyncClient, count: int, make: Callable[[int], dict[str, object]]
) -> list[httpx.Response]:
    """`count` requests at once; the gather is the synchronisation, no sleeps."""
    return await asyncio.gather(*(client.post("/v1/vend-token", **make(i)) for i in range(count)))  # type: ignore[arg-type]


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


@dataclass
class Storm:
    """Vend in a loop from many tasks; remember every success the client saw.

    `reach(n)` waits (on an event, not a timer) until n vends were acknowledged.
    """

    client: httpx.AsyncClient
    headers: dict[str, str]
    acknowledged: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _reached: asyncio.Event = field(default_factory=asyncio.Event)
    _target: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _one(self) -> None:
        while not self._stop.is_set():
            try:
                response = await self.client.post("/v1/vend-token", headers=self.headers)
            except httpx.HTTPError as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0)  # let the event loop run the stop request
                continue
            if response.status_code == 200:
                self.acknowledged.append(str(response.json()["requestId"]))
                if len(self.acknowledged) >= self._target:
                    self._reached.set()
            else:
                self.errors[str(response.status_code)] += 1

    def start(self, tasks: int = 16) -> None:
        self._tasks = [asyncio.create_task(self._one()) for _ in range(tasks)]

    async def reach(self, count: int) -> None:
        self._target = count
        self._reached.clear()
        if len(self.acknowledged) < count:
            await asyncio.wait_for(self._reached.wait(), timeout=120)

    async def finish(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def balance_of(engine: LocalEngine, user: str) -> int:
    """From the audit trail (admin side), so the user's rate limit does not get in the way."""
    trail = audit_trail(engine, user)
    return int(trail[-1]["balanceAfter"]) if trail else 0  # type: ignore[call-overload]


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE_SECONDS) -> None:
    """Poll a condition until the deadline (the deadline is the requirement, not a sleep)."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


class SimulatorProcess:
    """`pluct-engine simulator` as a separate process on a fixed loopback port.

    Killed and started again on the same port, it is an upstream outage and restart: its jobs
    and its counters (`GET /__stats`) are gone, as TTTranscribe's in-memory jobs are.
    """

    def __init__(self, port: int, secret: str, webhook_url: str = "") -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._secret = secret
        self._webhook = ["--webhook-url", webhook_url] if webhook_url else []
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> SimulatorProcess:
        env = {**os.environ, "TTT_SHARED_SECRET": self._secret}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "engine", "simulator", "--port", str(self.port), *self._webhook],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self._answers(), "the simulator to listen")
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def auth(self) -> dict[str, str]:
        """The engine's credential at upstream (its control routes take it too)."""
        return {"X-Engine-Auth": self._secret}

    def control(self, path: str, body: dict[str, Any]) -> None:
        httpx.post(self.url + path, json=body, headers=self.auth, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        """`GET /__stats`: what the simulator received (calls, jobs, webhooks sent)."""
        response = httpx.get(self.url + "/__stats", headers=self.auth, timeout=5)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
