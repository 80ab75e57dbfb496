"""What `/health` and `/health/services` say about TTTranscribe.

A background task probes the upstream every `TTT_PROBE_INTERVAL_SECONDS` (default 10 s, so
the verdict is never older than about 13 s with the 3 s probe timeout): `GET /ready`, or
`GET /health` where the upstream has no `/ready`.  The health routes only read the last
probe and the breaker, so they never wait on the upstream and cannot be used to make the
engine call out, however often they are polled.

The verdict, worst first: the breaker is open → `unhealthy`; the last probe failed (down,
timed out, `/ready` 503) → `degraded` with its reason; the breaker is half-open, or a real
call failed after the last good probe → `degraded`; otherwise `healthy`.  A good probe after
the breaker's cool-down closes it: the mobile app refuses to submit while we say `degraded`,
so without that no real call would ever come to close it (issue 18: "never recovers").
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from engine.upstream.breaker import BreakerSnapshot, BreakerState
from engine.upstream.client import TTTClient

DEFAULT_PROBE_INTERVAL_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 3.0
log = logging.getLogger("engine.upstream")


@dataclass(frozen=True, slots=True)
class ProbeReport:
    ok: bool
    endpoint: str
    status_code: int | None
    reason: str
    latency_ms: float
    checked_at: float  # wall clock, for the body
    checked_mono: float  # the breaker's clock, to compare with its last failure


@dataclass(frozen=True, slots=True)
class UpstreamView:
    status: str  # healthy | degraded | unhealthy | unknown
    reason: str
    breaker: BreakerSnapshot
    probe: ProbeReport | None


class UpstreamMonitor:
    def __init__(
        self, client: TTTClient, interval_seconds: float = DEFAULT_PROBE_INTERVAL_SECONDS
    ) -> None:
        self._client = client
        self.interval_seconds = interval_seconds
        self.last: ProbeReport | None = None

    async def probe_once(self) -> ProbeReport:
        ready = await self._client.readiness(min(PROBE_TIMEOUT_SECONDS, self.interval_seconds))
        report = ProbeReport(
            ok=ready.ok,
            endpoint=ready.endpoint,
            status_code=ready.status_code,
            reason=ready.reason,
            latency_ms=ready.latency_ms,
            checked_at=time.time(),
            checked_mono=self._client.breaker.now(),
        )
        if report.ok:
            self._client.breaker.close_after_cooldown()
        if self.last is None or self.last.ok != report.ok:
            log.info("upstream probe %s: %s", "ready" if report.ok else "not ready", report.reason)
        self.last = report
        return report

    async def run(self) -> None:
        """Probe forever, one probe at a time (the app's lifespan starts and cancels this)."""
        while True:
            try:
                await self.probe_once()
            except Exception:  # a probe bug must not end health reporting for good
                log.exception("upstream probe failed")
            await asyncio.sleep(self.interval_seconds)

    def view(self) -> UpstreamView:
        snap = self._client.breaker.snapshot()
        probe = self.last
        if snap.state is BreakerState.OPEN:
            reason = f"circuit breaker open after {snap.consecutive_failures} failures"
            return UpstreamView("unhealthy", reason, snap, probe)
        if probe is None:
            if snap.calls_seen and not snap.consecutive_failures:
                return UpstreamView("healthy", "", snap, probe)
            return UpstreamView("unknown", "not probed yet", snap, probe)
        if not probe.ok:
            return UpstreamView("degraded", probe.reason, snap, probe)
        if snap.state is BreakerState.HALF_OPEN:
            return UpstreamView("degraded", "circuit breaker half-open", snap, probe)
        if snap.consecutive_failures and snap.last_failure_at > probe.checked_mono:
            reason = f"{snap.consecutive_failures} upstream calls failed since the last probe"
            return UpstreamView("degraded", reason, snap, probe)
        return UpstreamView("healthy", "", snap, probe)

    async def verdict(self) -> tuple[str, BreakerSnapshot]:
        """`(status, breaker)` for `/health`; reads state only, never calls upstream."""
        view = self.view()
        return view.status, view.breaker
