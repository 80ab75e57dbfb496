"""What `/health` and `/health/services` say about TTTranscribe.

The verdict comes from the breaker and real traffic first; only when the engine has seen no
upstream call recently does it probe the unauthenticated `GET /health`, at most once per
`PROBE_INTERVAL_SECONDS` however often health is polled (the original probed, with the
secret, on every hit).
"""

from __future__ import annotations

import asyncio
import time

from engine.upstream.breaker import BreakerSnapshot, BreakerState
from engine.upstream.client import TTTClient

PROBE_INTERVAL_SECONDS = 15.0


class UpstreamMonitor:
    def __init__(self, client: TTTClient) -> None:
        self._client = client
        self._probed_at = -PROBE_INTERVAL_SECONDS
        self._probe_ok: bool | None = None
        self._calls_at_probe = -1
        self._lock = asyncio.Lock()

    async def verdict(self) -> tuple[str, BreakerSnapshot]:
        snap = self._client.breaker.snapshot()
        if snap.state is BreakerState.OPEN:
            return "unhealthy", snap
        if snap.state is BreakerState.HALF_OPEN or snap.consecutive_failures > 0:
            return "degraded", snap
        await self._maybe_probe(snap)
        if self._probe_ok is False:
            return "unhealthy", snap
        if self._probe_ok or snap.calls_seen:
            return "healthy", snap
        return "unknown", snap

    async def _maybe_probe(self, snap: BreakerSnapshot) -> None:
        now = time.monotonic()
        if now - self._probed_at < PROBE_INTERVAL_SECONDS:
            return
        async with self._lock:
            if now - self._probed_at < PROBE_INTERVAL_SECONDS:
                return
            self._probed_at = now
            if snap.calls_seen != self._calls_at_probe and snap.calls_seen:
                # Real traffic since the last probe already tells the story.
                self._calls_at_probe = snap.calls_seen
                self._probe_ok = True
                return
            self._probe_ok = await self._client.probe()
