"""Per-subject request limits, counted atomically in the store.

A fixed one-minute window: exact under any concurrency and shared by every worker and machine
that shares the store.  A vend counts itself inside its own spend operation (one store round
trip per vend); other requests count with `hit`.
"""

from __future__ import annotations

import math

import msgspec

from engine.errors import RateLimited
from engine.store.protocol import Store
from engine.store.records import RateWindow, WindowCount

WINDOW_SECONDS = 60
POLICY_NAME = "per-user"
# Unauthenticated windows are named `ip|<address>`: `|` is in no user id (`domain/ids.py`), so
# a user who calls themselves `ip:127.0.0.1` can never count in (or exhaust) that address's
# `/meta` window, nor the address in theirs.
_IP_NAMESPACE = "ip|"


def ip_subject(address: str) -> str:
    """The rate-limit subject of an unauthenticated client address."""
    return _IP_NAMESPACE + address


def refusal_subject(user_id: str) -> str:
    """The window counting a user's 403-refused vends (not their rate window: a refusal does
    not use up the user's requests)."""
    return "refused|" + user_id


class RateState(msgspec.Struct, frozen=True):
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

    def window(self, subject: str) -> RateWindow | None:
        """What a store operation should count for `subject`; None when limiting is off."""
        return RateWindow(subject, self.per_minute, WINDOW_SECONDS) if self.per_minute > 0 else None

    def state(self, counted: WindowCount, now: float) -> RateState:
        reset = max(1, math.ceil(counted.reset_at - now))
        return RateState(self.per_minute, max(0, self.per_minute - counted.count), reset)

    def refusal(self, counted: WindowCount, now: float) -> RateLimited:
        state = self.state(counted, now)
        return RateLimited(
            details={
                "limit": self.per_minute,
                "windowSeconds": WINDOW_SECONDS,
                "retryAfterSeconds": state.reset_seconds,
            },
            headers={"Retry-After": str(state.reset_seconds), **state.headers()},
            extra={"retryAfterSeconds": state.reset_seconds},
        )

    async def hit(self, subject: str, now: float) -> RateState | None:
        """Count one request; raise `RateLimited` past the limit.  None when disabled."""
        window = self.window(subject)
        if window is None:
            return None
        counted = await self._store.hit_window(window.subject, window.window_seconds, now)
        if counted.count > self.per_minute:
            raise self.refusal(counted, now)
        return self.state(counted, now)
