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

_CLIENT_KEY = re.compile(r"[A-Za-z0-9._:~+=/@|-]{1,128}")


def client_key(body_key: str | None, header_key: str | None) -> str | None:
    """The key to use; either one, when present, must be well formed."""
    for name, value in (("clientRequestId", body_key), ("X-Client-Request-Id", header_key)):
        if value is not None and not _CLIENT_KEY.fullmatch(value):
            raise InvalidRequest(
                f"{name} must be 1-128 characters from A-Z a-z 0-9 . _ : ~ + = / @ | -",
                code="invalid_idempotency_key",
                details={"field": name},
            )
    return body_key or header_key or None


def fingerprint(payload: bytes) -> str:
    """What a replay must match exactly: a digest of the request's meaningful content."""
    return hashlib.sha256(payload).hexdigest()


def scoped_key(
    principal: str, route: str, key: str | None, fingerprint: str, ttl_seconds: float, now: float
) -> IdempotencyKey | None:
    """The store slot for a client key, holding the `fingerprint` of the first request."""
    if key is None:
        return None
    return IdempotencyKey(f"{principal}|{route}", key, fingerprint, now + ttl_seconds)
