"""Per-subject request limits, counted atomically in the store.

A fixed one-minute window: one store round trip per request, exact under any concurrency and
shared by every worker and machine that shares the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.errors import RateLimited
from engine.store.protocol import Store

WINDOW_SECONDS = 60
POLICY_NAME = "per-user"


@dataclass(frozen=True, slots=True)
class RateState:
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        """IETF draft `RateLimit` / `RateLimit-Policy` structured fields."""
        return {
            "RateLimit-Policy": f'"{POLICY_NAME}";q={self.limit};w={WINDOW_SECONDS}',
            "RateLimit": f'"{POLICY_NAME}";r={self.remaining};t={self.reset_seconds}',
        }


class RateLimiter:
    def __init__(self, store: Store, per_minute: int) -> None:
        self._store = store
        self.per_minute = per_minute

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    async def hit(self, subject: str, now: float) -> RateState | None:
        """Count one request; raise `RateLimited` past the limit.  None when disabled."""
        if not self.enabled:
            return None
        window = await self._store.hit_window(f"rl:{subject}", self.per_minute, WINDOW_SECONDS, now)
        reset = max(1, math.ceil(window.reset_at - now))
        state = RateState(self.per_minute, max(0, self.per_minute - window.count), reset)
        if window.count > self.per_minute:
            raise RateLimited(
                details={
                    "limit": self.per_minute,
                    "windowSeconds": WINDOW_SECONDS,
                    "retryAfterSeconds": reset,
                },
                headers={"Retry-After": str(reset), **state.headers()},
                extra={"retryAfterSeconds": reset},
            )
        return state
