"""Timestamps as the mobile client and the original Worker print them."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(epoch_seconds: float) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, e.g. `2026-11-27T20:52:00.123Z`."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
