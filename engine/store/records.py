"""Values that cross the store boundary: orders going in, outcomes and entries coming out.

They are msgspec Structs so backends can persist them as compact JSON without a second
schema, and so the HTTP layer can render them without copying.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class Action(StrEnum):
    """What a ledger entry records.  Only `vend`, `grant` and `refund` move credits."""

    VEND = "vend"
    VEND_REFUSED = "vend_refused"
    VEND_RATE_LIMITED = "vend_rate_limited"
    GRANT = "grant"
    REFUND = "refund"


class Context(msgspec.Struct, frozen=True):
    """Who asked, for the audit trail."""

    ip: str = ""
    user_agent: str = ""
    # The HTTP request id (`X-Request-Id`) that caused the entry: for correlating the audit
    # with the access log.  Never a ledger key: a vend is named by its own `request_id`.
    http_request_id: str = ""


class IdempotencyKey(msgspec.Struct, frozen=True):
    """A client key scoped to one principal and one route, with the request's fingerprint.

    The scope is what keeps user B from ever reading user A's result with A's key.
    """

    scope: str
    key: str
    fingerprint: str
    expires_at: float


class AuditEntry(msgspec.Struct, frozen=True, rename="camel"):
    id: int
    user_id: str
    action: str
    delta: int
    balance_after: int
    request_id: str
    ip: str
    user_agent: str
    at: str
    reason: str = ""
    # Additive, with a default: entries written before it existed read as "".
    http_request_id: str = ""


class RateWindow(msgspec.Struct, frozen=True):
    """Count this request against `subject`'s fixed window of `window_seconds`."""

    subject: str
    limit: int
    window_seconds: int


class VendOrder(msgspec.Struct, frozen=True):
    """A vend to charge.  It names its token by `jti` and `issued_at`, not by the token itself:
    see `VendReceipt`."""

    user_id: str
    request_id: str
    jti: str
    issued_at: int
    expires_at: int
    client_request_id: str | None
    idempotency: IdempotencyKey | None
    context: Context
    now: float
    rate: RateWindow | None = None


class VendReceipt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a charge remembers for its replays.

    Not the token itself: a vended token is a function of its claims and the vend key, so `jti`,
    `issued_at` and `expires_at` sign it again byte for byte (`TokenAuthority.vended_token`).
    The record is kept for the whole idempotency retention, and on Redis every byte of it is
    also written to the AOF; without the token it is less than half the size.  `token` is set
    only in receipts that earlier engines stored, which have no `jti`.
    """

    request_id: str
    jti: str = ""
    issued_at: int = 0
    expires_at: int
    balance_after: int
    client_request_id: str | None
    at: str
    token: str = ""


class WindowCount(msgspec.Struct, frozen=True):
    """Requests counted in the current fixed window, and when it resets (epoch seconds)."""

    count: int
    reset_at: float


class SpendOutcome(msgspec.Struct, frozen=True):
    """`status` is one of charged, replayed, insufficient, key_conflict, rate_limited."""

    status: str
    balance: int
    receipt: VendReceipt | None = None
    window: WindowCount | None = None


class GrantOrder(msgspec.Struct, frozen=True):
    user_id: str
    amount: int
    request_id: str
    reason: str
    idempotency: IdempotencyKey | None
    context: Context
    now: float


class GrantReceipt(msgspec.Struct, frozen=True):
    user_id: str
    amount: int
    balance_after: int
    request_id: str
    reason: str
    at: str


class GrantOutcome(msgspec.Struct, frozen=True):
    """`status` is one of granted, replayed, key_conflict."""

    status: str
    receipt: GrantReceipt | None = None


class RefundOrder(msgspec.Struct, frozen=True):
    user_id: str
    vend_request_id: str
    reason: str
    context: Context
    now: float


class RefundOutcome(msgspec.Struct, frozen=True):
    """`status` is one of refunded, already_refunded, not_found."""

    status: str
    entry: AuditEntry | None = None


class BalanceView(msgspec.Struct, frozen=True):
    balance: int
    updated_at: str | None


class StoredResponse(msgspec.Struct, frozen=True):
    """A response remembered under an idempotency key, replayed byte for byte."""

    fingerprint: str
    status_code: int
    body: bytes


class LedgerSnapshot(msgspec.Struct, frozen=True):
    """Every balance and every entry, read at one consistent point."""

    balances: dict[str, int]
    entries: list[AuditEntry]
