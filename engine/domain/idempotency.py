"""Idempotency keys: which client key counts, and what it is scoped to.

The real app regenerates `X-Client-Request-Id` on every retry, while the body field
`clientRequestId` stays stable across retries of one logical call, so the body wins when both
are present.  A key is scoped to the principal *and* the route: user B replaying user A's key
hits a different slot and can never read A's result.
"""

from __future__ import annotations

import hashlib
import re

from engine.errors import InvalidRequest
from engine.store.records import IdempotencyKey

_CLIENT_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


def client_key(body_key: str | None, header_key: str | None) -> str | None:
    key = body_key if body_key else header_key
    if key is None or key == "":
        return None
    if not _CLIENT_KEY.match(key):
        raise InvalidRequest(
            "clientRequestId must be 1-128 printable ASCII characters without spaces",
            code="invalid_idempotency_key",
        )
    return key


def scoped_key(
    principal: str, route: str, key: str | None, payload: bytes, ttl_seconds: float, now: float
) -> IdempotencyKey | None:
    """The store slot for a client key; `payload` is what a replay must match exactly."""
    if key is None:
        return None
    fingerprint = hashlib.sha256(payload).hexdigest()
    return IdempotencyKey(f"{principal}|{route}", key, fingerprint, now + ttl_seconds)
