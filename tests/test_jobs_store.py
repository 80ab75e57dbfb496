"""The job lifecycle's store operations, on SQLite, Redis and a Redis Cluster alike."""

from __future__ import annotations

import asyncio
import os
import time

from engine.domain.ledger import verify
from engine.store import Store
from engine.store.records import (
    ConsumeOrder,
    Context,
    GrantOrder,
    JobObservation,
    RefundOrder,
    VendOrder,
    vend_request_id,
)

NOW = 1_900_000_000.0


async def _vended(store: Store, user: str, credits: int = 1) -> str:
    """Grant and vend once; the vend's token jti."""
    await store.grant(GrantOrder(user, credits, f"g-{user}", "test", None, Context(), NOW))
    jti = os.urandom(16).hex()
    spent = await store.spend(
        VendOrder(
            user, vend_request_id(jti), jti, int(NOW), int(NOW) + 900, None, None, Context(), NOW
        )
    )
    assert spent.status == "charged"
    return jti


def _consume(user: str, jti: str, job_id: str, now: float = NOW) -> ConsumeOrder:
    return ConsumeOrder(
        job_id=job_id,
        user_id=user,
        jti=jti,
        vend_request_id=vend_request_id(jti),
        body=b'{"jobId":"%s","status":"queued"}' % job_id.encode(),
        hold_until=now + 60,
        expires_at=now + 3600,
        now=now,
    )


def _seen(user: str, job_id: str, status: str, **extra: object) -> JobObservation:
    body = b'{"jobId":"%s","status":"%s"}' % (job_id.encode(), status.encode())
    fields: dict[str, object] = {"now": NOW + 1, "refund": True, "vend_request_id": ""}
    fields.update(extra)
    return JobObservation(user, job_id, status, body, f"{status}|0", **fields)  # type: ignore[arg-type]


async def test_consume_is_one_step_and_excludes_every_other_consumer(store: Store) -> None:
    jti = await _vended(store, "ada")
    outcomes = await asyncio.gather(
        *(store.consume_token(_consume("ada", jti, f"job_{i}")) for i in range(12))
    )
    assert sorted(outcomes) == ["consumed"] + ["token_in_use"] * 11
    winner = f"job_{outcomes.index('consumed')}"
    # The same order run again (a retried batch) is the same consumption, not a refusal.
    assert await store.consume_token(_consume("ada", jti, winner)) == "consumed"
    assert (await store.job_owner(winner), await store.job_owner("job_x")) == ("ada", None)
    assert (await store.job("bob", winner)) is None  # owner only
    accepted = await store.accept_job("ada", winner, "up-1", b'{"status":"queued"}', NOW + 1)
    assert accepted is not None and (accepted.state, accepted.upstream_id) == ("accepted", "up-1")
    assert await store.consume_token(_consume("ada", jti, "job_late")) == "token_used"
    refund = await store.refund(RefundOrder("ada", vend_request_id(jti), "r", Context(), NOW + 2))
    assert refund.status == "token_used"
    assert (await store.balance("ada")).balance == 0


async def test_release_returns_the_token_once_and_a_stale_hold_is_taken_over(store: Store) -> None:
    jti = await _vended(store, "cy")
    assert await store.consume_token(_consume("cy", jti, "job_a")) == "consumed"
    refused = await store.refund(RefundOrder("cy", vend_request_id(jti), "r", Context(), NOW))
    assert refused.status == "token_in_use"
    assert (await store.release_token("cy", "job_a"), await store.release_token("cy", "job_a")) == (
        True,
        False,
    )
    assert await store.job("cy", "job_a") is None
    assert await store.consume_token(_consume("cy", jti, "job_b")) == "consumed"
    # Its holder died mid-call: past the hold, a new submission takes the token over.
    assert await store.consume_token(_consume("cy", jti, "job_c", now=NOW + 61)) == "consumed"
    assert await store.accept_job("cy", "job_c", "up-c", b"{}", NOW + 62) is not None
    assert await store.consume_token(_consume("cy", jti, "job_d", now=NOW + 200)) == "token_used"


async def test_a_refunded_vend_revokes_its_token(store: Store) -> None:
    jti = await _vended(store, "dee")
    refund = await store.refund(RefundOrder("dee", vend_request_id(jti), "r", Context(), NOW))
    assert refund.status == "refunded"
    assert await store.consume_token(_consume("dee", jti, "job_r")) == "token_refunded"
    assert (await store.balance("dee")).balance == 1


async def test_a_failed_job_is_kept_once_and_refunded_once(store: Store) -> None:
    jti = await _vended(store, "eli")
    assert await store.consume_token(_consume("eli", jti, "job_f")) == "consumed"
    await store.accept_job("eli", "job_f", "up-f", b'{"status":"queued"}', NOW)
    running = await store.observe_job(_seen("eli", "job_f", "processing"))
    assert running is not None and (running.state, running.updated_at) == ("accepted", NOW + 1)
    again = await store.observe_job(_seen("eli", "job_f", "processing", now=NOW + 5))
    assert again is not None and again.updated_at == NOW + 1  # nothing changed, no new time
    failed = await asyncio.gather(
        *(
            store.observe_job(
                _seen("eli", "job_f", "failed", vend_request_id=vend_request_id(jti), now=NOW + 9)
            )
            for _ in range(8)
        )
    )
    assert {(f.state, f.credits_refunded) for f in failed if f} == {("failed", 1)}
    late = await store.observe_job(_seen("eli", "job_f", "completed", now=NOW + 20))
    assert late is not None and late.state == "failed"  # the first terminal state stays
    assert (await store.balance("eli")).balance == 1
    actions = [e.action for e in await store.audit("eli", 10, 0)]
    assert actions == ["grant", "vend", "refund"]
    assert (await verify(store)).ok


async def test_a_lost_job_fails_only_after_its_grace(store: Store) -> None:
    jti = await _vended(store, "fay")
    rid = vend_request_id(jti)
    assert await store.consume_token(_consume("fay", jti, "job_l")) == "consumed"
    await store.accept_job("fay", "job_l", "up-l", b'{"status":"queued"}', NOW)

    def lost(at: float) -> JobObservation:
        return _seen(
            "fay", "job_l", "failed", lost=True, grace_seconds=600.0, now=at, vend_request_id=rid
        )

    first = await store.observe_job(lost(NOW + 10))
    assert first is not None and (first.state, first.lost_since) == ("accepted", NOW + 10)
    within = await store.observe_job(lost(NOW + 500))
    assert within is not None and within.state == "accepted"
    past = await store.observe_job(lost(NOW + 611))
    assert past is not None and (past.state, past.credits_refunded) == ("failed", 1)


async def test_a_webhook_before_the_accept_keeps_its_state_and_spends_the_token(
    store: Store,
) -> None:
    jti = await _vended(store, "gus")
    assert await store.consume_token(_consume("gus", jti, "job_w")) == "consumed"
    done = await store.observe_job(_seen("gus", "job_w", "completed", upstream_id="up-w"))
    assert done is not None and (done.state, done.upstream_id) == ("completed", "up-w")
    assert await store.release_token("gus", "job_w") is False  # upstream has it: not released
    assert await store.consume_token(_consume("gus", jti, "job_w2")) == "token_used"
    accepted = await store.accept_job("gus", "job_w", "up-w", b"{}", time.time())
    assert accepted is not None and accepted.state == "completed"
