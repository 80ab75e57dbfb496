"""What every prefilled store must do as an engine's own, whichever backend wrote it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.domain.ledger import verify
from engine.ledger_prefill import _VEND_FINGERPRINT
from engine.store.protocol import Store
from engine.store.records import Context, IdempotencyKey, RefundOrder, SpendOutcome, VendOrder

CONTEXT = Context("10.0.0.1", "test")


@dataclass(frozen=True)
class Picked:
    """Rows the test found in the filled store: a vend whose token bought its job, a vend with
    neither job nor refund, and a remembered vend response (its owner, scope and key)."""

    used: tuple[str, str]
    free: tuple[str, str]
    owner: str
    scope: str
    key: str


async def assert_serves_as_its_own(store: Store, entries: int, picked: Picked) -> SpendOutcome:
    """`ledger verify` is clean, refunds follow the token rules, a remembered key replays;
    returns the replay for the backend's own checks."""
    report = await verify(store)
    assert report.ok, report.problems
    assert report.entries == entries
    now = time.time()
    used = await store.refund(RefundOrder(*picked.used, "test", CONTEXT, now))
    assert used.status == "token_used"
    refund = RefundOrder(*picked.free, "test", CONTEXT, now)
    assert (await store.refund(refund)).status == "refunded"
    assert (await store.refund(refund)).status == "already_refunded"
    replay = VendOrder(
        user_id=picked.owner,
        request_id="req_" + "0" * 32,
        jti="0" * 32,
        issued_at=int(now),
        expires_at=int(now) + 900,
        client_request_id=picked.key,
        idempotency=IdempotencyKey(picked.scope, picked.key, _VEND_FINGERPRINT, now + 60),
        context=CONTEXT,
        now=now,
    )
    replayed = await store.spend(replay)
    assert replayed.status == "replayed" and replayed.receipt is not None
    assert replayed.receipt.client_request_id == picked.key
    return replayed
