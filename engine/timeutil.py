"""Timestamps as the mobile client and the original Worker print them."""

from __future__ import annotations

import functools
import time


@functools.lru_cache(maxsize=64)
def _second(epoch_second: int) -> str:
    # Cached: a vend formats both "now" and its token's expiry, and formatting a second costs
    # more than the rest of `iso`.  A handful of seconds are live at any moment.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


def iso(epoch_seconds: float) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, e.g. `2026-11-27T20:52:00.123Z`."""
    second = int(epoch_seconds)
    return f"{_second(second)}.{int((epoch_seconds - second) * 1000):03d}Z"
