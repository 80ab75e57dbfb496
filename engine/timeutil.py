"""Timestamps as the mobile client and the original Worker print them."""

from __future__ import annotations

import time

_last: tuple[int, str] = (-1, "")


def iso(epoch_seconds: float) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, e.g. `2026-11-27T20:52:00.123Z`.

    On the hot path of every write: the formatted second is reused while it lasts.
    """
    global _last
    second = int(epoch_seconds)
    if _last[0] != second:
        _last = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    millis = int((epoch_seconds - second) * 1000)
    return f"{_last[1]}.{millis:03d}Z"
