"""A circuit breaker per upstream, shared by all requests of one process.

Closed: calls flow; it opens after `failure_threshold` failures in a row, or when at least
half of the last `window` calls failed (once `min_calls` were seen).  Open: calls fail fast
with 503 and `Retry-After` until `cooldown` has passed.  Half-open: up to `probes` calls go
through; that many successes close it, any failure opens it again.

With several workers (or machines) each process keeps its own breaker: a failing upstream
trips each of them after its own few failures, which bounds the extra load to
`failure_threshold × processes` calls per cool-down.  That is deliberate: sharing breaker
state through the store would add a store round trip to every upstream call.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from engine.errors import ServiceUnavailable


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    state: BreakerState
    consecutive_failures: int
    failure_rate: float
    retry_after_seconds: int
    last_latency_ms: float
    calls_seen: int
    last_failure_at: float = 0.0  # the breaker's clock; 0 when no call ever failed


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        cooldown_seconds: float = 30.0,
        window: int = 20,
        min_calls: int = 10,
        probes: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._threshold = failure_threshold
        self._cooldown = cooldown_seconds
        self._min_calls = min_calls
        self._probes = probes
        self._clock = clock
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._consecutive_failures = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._last_latency_ms = 0.0
        self._calls_seen = 0
        self._last_failure_at = 0.0

    def now(self) -> float:
        """The breaker's clock, so others can compare times with `last_failure_at`."""
        return self._clock()

    def _retry_after(self) -> int:
        return max(1, math.ceil(self._opened_at + self._cooldown - self._clock()))

    def before_call(self) -> None:
        """Admit a call or raise 503 `circuit_open`; every admitted call must report back."""
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self._cooldown:
                self._refuse()
            self._state = BreakerState.HALF_OPEN
            self._probes_in_flight = 0
            self._probe_successes = 0
        if self._state is BreakerState.HALF_OPEN:
            if self._probes_in_flight >= self._probes:
                self._refuse()
            self._probes_in_flight += 1

    def _refuse(self) -> None:
        retry = self._retry_after() if self._state is BreakerState.OPEN else 1
        raise ServiceUnavailable(
            f"{self.name} is failing; calls are paused",
            code="circuit_open",
            details={"service": self.name, "retryAfterSeconds": retry},
            headers={"Retry-After": str(retry)},
            extra={"retryAfterSeconds": retry},
        )

    def record(self, success: bool, latency_ms: float) -> None:
        self._calls_seen += 1
        self._last_latency_ms = latency_ms
        self._outcomes.append(success)
        self._consecutive_failures = 0 if success else self._consecutive_failures + 1
        if not success:
            self._last_failure_at = self._clock()
        if self._state is BreakerState.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            if not success:
                self._open()
                return
            self._probe_successes += 1
            if self._probe_successes >= self._probes:
                self._state = BreakerState.CLOSED
                self._outcomes.clear()
            return
        if not success and (
            self._consecutive_failures >= self._threshold
            or (len(self._outcomes) >= self._min_calls and self.failure_rate() >= 0.5)
        ):
            self._open()

    def close_after_cooldown(self) -> None:
        """A good health probe once the cool-down is over closes the breaker.

        Half-open waits for real calls to succeed, but while health says `degraded` the mobile
        app sends none; the upstream's own readiness is the evidence instead.  Before the
        cool-down the breaker stays open: `/ready` can be fine while `/transcribe` fails.
        """
        cooled = self._state is BreakerState.OPEN and (
            self._clock() - self._opened_at >= self._cooldown
        )
        if cooled or self._state is BreakerState.HALF_OPEN:
            self._state = BreakerState.CLOSED
            self._consecutive_failures = 0
            self._probes_in_flight = 0
            self._outcomes.clear()

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()

    def failure_rate(self) -> float:
        if not self._outcomes:
            return 0.0
        return sum(1 for ok in self._outcomes if not ok) / len(self._outcomes)

    def snapshot(self) -> BreakerSnapshot:
        state = self._state
        if state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown:
            state = BreakerState.HALF_OPEN
        return BreakerSnapshot(
            state=state,
            consecutive_failures=self._consecutive_failures,
            failure_rate=round(self.failure_rate(), 3),
            retry_after_seconds=self._retry_after() if state is BreakerState.OPEN else 0,
            last_latency_ms=round(self._last_latency_ms, 3),
            calls_seen=self._calls_seen,
            last_failure_at=self._last_failure_at,
        )
