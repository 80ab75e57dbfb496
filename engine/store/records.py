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


# Refusals of users without an account (no credits, ever) are all counted in a per-minute
# tally; only this many a minute, across all such users, also get a ledger entry of their own.
UNFUNDED_REFUSALS_KEPT_PER_MINUTE = 100


class RefusalOrder(msgspec.Struct, frozen=True):
    """A vend refused before it reached the spend (403: another user's id, a missing scope);
    recorded as a `vend_refused` entry so that every refused vend leaves one."""

    user_id: str
    request_id: str
    reason: str
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
    """`status` is one of refunded, already_refunded, not_found, and (the vend's token bought a
    job or is buying one) token_used, token_in_use."""

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


# A raw ledger row as the id-order scan reads it: (id, user_id, action, delta, balance_after,
# request_id).  No Struct per row: at millions of rows the decode cost as much as the checks.
LedgerRow = tuple[int, str, str, int, int, str]


class LedgerChunk(msgspec.Struct, frozen=True):
    """A run of one user's ledger entries, oldest first, with the user's stored balance.

    `Store.read_ledger` yields every user's entries as consecutive chunks (a user never comes
    back once another's chunk has started), so a reader holds one user's state at a time and
    memory stays bounded however long the ledger grows.  `balance` is None for a user without
    an account (refusals of a user never granted credits); a user with an account and no entry
    comes as one chunk without entries.
    """

    user_id: str
    balance: int | None
    entries: list[AuditEntry]


# -- the job lifecycle: a vended token's consumption and the job it bought --------------
class ConsumeOrder(msgspec.Struct, frozen=True):
    """Spend a vended token on a new job, in state `submitting`, owned by `user_id`.

    `hold_until` bounds how long the token stays in flight: past it, the submission is taken
    to have died mid-call (the engine crashed) and a new one may take the token over.
    """

    job_id: str
    user_id: str
    jti: str
    vend_request_id: str
    body: bytes
    hold_until: float
    expires_at: float
    now: float


class JobRecord(msgspec.Struct, frozen=True):
    """One job as the store keeps it.  `state` is submitting, accepted, completed or failed;
    `body` is the status body last answered (JSON); `change` names its status and progress,
    so that `updated_at` moves only when those do; `lost_since` is when upstream first said
    it had no such job (0: it has not)."""

    job_id: str
    user_id: str
    jti: str
    vend_request_id: str
    state: str
    upstream_id: str
    body: bytes
    change: str
    created_at: float
    updated_at: float
    lost_since: float
    credits_refunded: int


class JobObservation(msgspec.Struct, frozen=True):
    """What the engine just learnt of a job: its upstream state (`status`, `body`, `change`),
    or, with `lost`, that upstream has no such job (then `body` is the failed body to keep
    once `grace_seconds` have passed since it was first lost).  A terminal state is kept
    once and never replaced; reaching `failed` refunds the vend when `refund` is set."""

    user_id: str
    job_id: str
    status: str
    body: bytes
    change: str
    now: float
    upstream_id: str = ""
    lost: bool = False
    grace_seconds: float = 0.0
    refund: bool = False
    vend_request_id: str = ""


VEND_REQUEST_PREFIX = "req_"
FAILED_JOB_REFUND_REASON = "job_failed"  # the reason of a failed job's automatic refund


def vend_request_id(jti: str) -> str:
    """The requestId of the vend that minted the token `jti`: a vend names its request after
    its token, so a token leads to its vend (for a refund's exclusion) with no lookup."""
    return VEND_REQUEST_PREFIX + jti


def token_of_vend(request_id: str) -> str | None:
    """The inverse of `vend_request_id`; None for a vend made before requests were named so."""
    jti = request_id.removeprefix(VEND_REQUEST_PREFIX)
    return jti if jti != request_id and len(jti) == 32 else None
