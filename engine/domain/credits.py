"""Credits: vend (spend one), grant, refund, and read balances and the audit trail.

The service decides *what* to ask; the store makes each ask atomic.  No balance is ever read
here and written back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import msgspec

from engine.config import Settings
from engine.domain.idempotency import fingerprint, scoped_key
from engine.domain.ratelimit import WINDOW_SECONDS, RateLimiter, RateState, refusal_subject
from engine.domain.tokens import TRANSCRIBE_SCOPE, TokenAuthority, UserPrincipal, require_scope
from engine.errors import (
    USER_MISMATCH,
    Conflict,
    Forbidden,
    Gone,
    IdempotencyKeyReused,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
)
from engine.store.protocol import Store
from engine.store.records import (
    AuditEntry,
    BalanceView,
    Context,
    GrantOrder,
    GrantReceipt,
    RefundOrder,
    RefusalOrder,
    VendOrder,
    VendReceipt,
    vend_request_id,
)

Clock = Callable[[], float]
# A vend's body holds nothing that changes its outcome (a `userId` must match the token), so
# every keyed vend has this one fingerprint; hashed once rather than on every vend.
_VEND_FINGERPRINT = fingerprint(b"vend-token")


# 403-refused vends kept in the ledger per user per minute; the rest are counted, not kept.
REFUSALS_KEPT_PER_MINUTE = 10


def new_request_id() -> str:
    # `os.urandom` is what `secrets.token_hex` calls, without its three Python layers.
    return "req_" + os.urandom(16).hex()


class Vended(msgspec.Struct, frozen=True):
    token: str
    receipt: VendReceipt
    replayed: bool
    rate: RateState | None


class Granted(msgspec.Struct, frozen=True):
    receipt: GrantReceipt
    replayed: bool


class CreditService:
    def __init__(
        self,
        store: Store,
        tokens: TokenAuthority,
        limiter: RateLimiter,
        settings: Settings,
        clock: Clock = time.time,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._limiter = limiter
        self._settings = settings
        self._clock = clock

    async def vend(
        self,
        user: UserPrincipal,
        *,
        client_key: str | None,
        claimed_user_id: str | None,
        context: Context,
    ) -> Vended:
        """Spend one credit for a vended token; a replayed key returns the first token."""
        try:
            require_scope(user, TRANSCRIBE_SCOPE)
            if claimed_user_id is not None and claimed_user_id != user.user_id:
                raise Forbidden(
                    "Body userId does not match the token subject",
                    code="user_mismatch",
                    guidance=USER_MISMATCH,
                )
        except Forbidden as refusal:
            await self._audit_refusal(user, refusal, context)
            raise
        now = self._clock()
        minted = self._tokens.mint_vended(user.user_id, now)
        idempotency = scoped_key(
            f"user:{user.user_id}",
            "vend-token",
            client_key,
            _VEND_FINGERPRINT,
            self._settings.idempotency_ttl_seconds,
            now,
        )
        outcome = await self._store.spend(
            VendOrder(
                user_id=user.user_id,
                # Named after its token, so the token leads to its vend (see the jobs).
                request_id=vend_request_id(minted.jti),
                jti=minted.jti,
                issued_at=minted.issued_at,
                expires_at=minted.expires_at,
                client_request_id=client_key,
                idempotency=idempotency,
                context=context,
                now=now,
                rate=self._limiter.window(user.user_id),
            )
        )
        if outcome.status == "rate_limited" and outcome.window is not None:
            raise self._limiter.refusal(outcome.window, now)
        if outcome.status == "insufficient":
            raise InsufficientCredits(
                details={"balance": outcome.balance, "required": 1},
                extra={"error": "INSUFFICIENT_CREDITS", "balance": outcome.balance},
            )
        if outcome.status == "key_conflict" or outcome.receipt is None:
            raise IdempotencyKeyReused()
        rate = self._limiter.state(outcome.window, now) if outcome.window else None
        receipt = outcome.receipt
        if outcome.status != "replayed":
            return Vended(minted.token, receipt, False, rate)
        token = receipt.token or self._tokens.vended_token(
            user.user_id, receipt.jti, receipt.issued_at, receipt.expires_at
        )
        return Vended(token, receipt, True, rate)

    async def _audit_refusal(
        self, user: UserPrincipal, refusal: Forbidden, context: Context
    ) -> None:
        """A vend refused with 403 leaves its `vend_refused` entry like any refused vend.

        Counted in a window of its own first: past `REFUSALS_KEPT_PER_MINUTE` in a minute
        the further 403s of that user are counted there but not kept, so a stream of them
        cannot grow the ledger without bound (and does not use up the user's rate limit).
        """
        now = self._clock()
        counted = await self._store.hit_window(refusal_subject(user.user_id), WINDOW_SECONDS, now)
        if counted.count > REFUSALS_KEPT_PER_MINUTE:
            return
        await self._store.record_refusal(
            RefusalOrder(user.user_id, new_request_id(), refusal.error_code, context, now)
        )

    async def grant(
        self,
        user_id: str,
        amount: int | float,
        reason: str,
        *,
        client_key: str | None,
        context: Context,
    ) -> Granted:
        """Whole credits only: 5.0 is 5, 2.5 is refused (the original stored "2.5")."""
        if isinstance(amount, float) and not amount.is_integer():
            raise InvalidRequest(
                "amount must be a whole number of credits", details={"field": "amount"}
            )
        if not 1 <= amount <= self._settings.max_grant_amount:
            raise InvalidRequest(
                f"amount must be an integer from 1 to {self._settings.max_grant_amount}",
                details={"field": "amount"},
            )
        amount = int(amount)
        now = self._clock()
        payload = msgspec.json.encode([user_id, amount, reason])
        # Scoped to the target user as well, so the key lives in that user's Redis slot.
        idempotency = scoped_key(
            f"admin:{user_id}",
            "credits-add",
            client_key,
            fingerprint(payload),
            self._settings.idempotency_ttl_seconds,
            now,
        )
        outcome = await self._store.grant(
            GrantOrder(
                user_id, amount, client_key or new_request_id(), reason, idempotency, context, now
            )
        )
        if outcome.status == "key_conflict" or outcome.receipt is None:
            raise IdempotencyKeyReused()
        return Granted(outcome.receipt, outcome.status == "replayed")

    async def refund(
        self, user_id: str, vend_request_id: str, reason: str, context: Context
    ) -> AuditEntry:
        outcome = await self._store.refund(
            RefundOrder(user_id, vend_request_id, reason, context, self._clock())
        )
        if outcome.status == "already_refunded":
            raise Conflict("That vend was already refunded", code="already_refunded")
        if outcome.status in ("token_used", "token_in_use"):
            # Its token bought a job (or is buying one): the credit paid for a job that ran.
            raise Conflict(
                "That vend's token was used for a transcription; its credit is not refundable",
                code=outcome.status,
            )
        if outcome.status == "vend_archived":
            # Redis with an archive: the vend's record left RAM with its history
            # (`redis_archive`), and with it what made a refund at-most-once.
            raise Gone(
                "That vend is older than the hot window and archived; it is not refundable",
                code="vend_archived",
            )
        if outcome.entry is None:
            raise NotFound("No vend with that requestId for that user", code="vend_not_found")
        return outcome.entry

    async def balance(self, user_id: str) -> BalanceView:
        return await self._store.balance(user_id)

    async def audit(self, user_id: str, limit: int, after_id: int) -> list[AuditEntry]:
        return await self._store.audit(user_id, limit, after_id)
