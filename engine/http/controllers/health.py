"""Health: process uptime, version, store reachability and the upstream's state."""

from __future__ import annotations

import time

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.types import ASGIApp
from msgspec import UNSET

from engine.http.bodies import (
    BreakerHealth,
    BuildInfo,
    Connectivity,
    HealthResponse,
    ServiceConnectivity,
    ServiceHealthResponse,
    StoreHealth,
    UpstreamHealth,
    UpstreamProbe,
)
from engine.http.responses import json_response
from engine.services import Services
from engine.timeutil import iso
from engine.version import __version__

_DEPLOYED_AT = iso(time.time())


class HealthController(Controller):
    path = "/health"

    @get("/")
    async def health(self, services: NamedDependency[Services]) -> ASGIApp:
        """503 when the store does not answer, or answers but cannot serve (degraded), so a
        load balancer takes the process out."""
        started = time.perf_counter()
        reachable = await services.store.ping()
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        ttt, breaker = await services.monitor.verdict()
        degraded = reachable and bool(services.store.degraded)  # answers, cannot serve
        healthy = reachable and not degraded
        status = (
            "unavailable"
            if not reachable
            else ("ok" if ttt != "unhealthy" and not degraded else "degraded")
        )
        body = HealthResponse(
            ok=healthy,
            status=status,
            uptime_seconds=int(time.monotonic() - services.started_at),
            version=__version__,
            build=BuildInfo(ref=services.settings.build_ref, deployed_at=_DEPLOYED_AT),
            store=StoreHealth(
                backend=services.store.backend,
                reachable=reachable,
                latency_ms=latency_ms,
                problem=services.store.degraded if degraded else UNSET,
            ),
            connectivity=Connectivity(
                store="unreachable" if not reachable else ("degraded" if degraded else "connected"),
                ttt=ttt,
                circuit_breaker=breaker.state.value,
            ),
        )
        return json_response(body, status_code=200 if healthy else 503)

    @get("/services")
    async def services_health(self, services: NamedDependency[Services]) -> ASGIApp:
        """The shape the mobile app reads: `connectivity.ttt`, else `ttt.status`.

        Read from the background probe and the breaker only: never waits on the upstream.
        """
        view = services.monitor.view()
        snap, probe = view.breaker, view.probe
        body = ServiceHealthResponse(
            ttt=UpstreamHealth(
                status=view.status,
                response_time=snap.last_latency_ms,
                consecutive_failures=snap.consecutive_failures,
                reason=view.reason or UNSET,
                last_probe=UNSET
                if probe is None
                else UpstreamProbe(
                    ok=probe.ok,
                    endpoint=probe.endpoint,
                    checked_at=iso(probe.checked_at),
                    latency_ms=probe.latency_ms,
                    status_code=UNSET if probe.status_code is None else probe.status_code,
                    reason=probe.reason or UNSET,
                ),
            ),
            circuit_breaker=BreakerHealth(
                status=snap.state.value,
                state=snap.state.value,
                response_time=snap.last_latency_ms,
                consecutive_failures=snap.consecutive_failures,
                failure_rate=snap.failure_rate,
                retry_after_seconds=snap.retry_after_seconds,
            ),
            connectivity=ServiceConnectivity(ttt=view.status),
            probe_interval_seconds=services.monitor.interval_seconds,
        )
        return json_response(body)
