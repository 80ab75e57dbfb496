"""One contract, every backend: SQLite and Redis pass the very same assertions."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from engine.config import sqlite_path
from engine.domain.ledger import verify
from engine.store import Store
from engine.store.records import (
    Context,
    GrantOrder,
    IdempotencyKey,
    RateWindow,
    RefundOrder,
    StoredResponse,
    VendOrder,
)

CTX = Context(ip="127.0.0.1", user_agent="contract-test")


def vend(
    user: str,
    request_id: str,
    key: IdempotencyKey | None = None,
    now: float | None = None,
    rate: RateWindow | None = None,
) -> VendOrder:
    at = now or time.time()
    return VendOrder(
        user,
        request_id,
        f"jti-{request_id}",
        int(at),
        int(at) + 900,
        key.key if key else None,
        key,
        CTX,
        at,
        rate,
    )


def grant(
    user: str, amount: int, request_id: str = "g", key: IdempotencyKey | None = None
) -> GrantOrder:
    return GrantOrder(user, amount, request_id, "test", key, CTX, time.time())


def idem(scope: str, key: str, fingerprint: str = "fp", ttl: float = 3600) -> IdempotencyKey:
    return IdempotencyKey(scope, key, fingerprint, time.time() + ttl)


async def test_spend_needs_a_credit_and_records_the_refusal(store: Store) -> None:
    outcome = await store.spend(vend("ann", "r1"))
    assert (outcome.status, outcome.balance) == ("insufficient", 0)
    trail = await store.audit("ann", 10, 0)
    assert [(e.action, e.delta, e.balance_after) for e in trail] == [("vend_refused", 0, 0)]
    assert (await store.balance("ann")).balance == 0


async def test_grant_then_spend_moves_exactly_one_credit(store: Store) -> None:
    granted = await store.grant(grant("ann", 3))
    assert granted.receipt is not None and granted.receipt.balance_after == 3
    spent = await store.spend(vend("ann", "r1"))
    assert spent.status == "charged" and spent.balance == 2
    view = await store.balance("ann")
    assert view.balance == 2 and view.updated_at is not None
    actions = [(e.action, e.delta, e.balance_after) for e in await store.audit("ann", 10, 0)]
    assert actions == [("grant", 3, 3), ("vend", -1, 2)]


async def test_audit_text_survives_any_characters(store: Store) -> None:
    odd = 'quote " backslash \\ slash / tab \t unicode é 🎧'
    context = Context(ip="::1", user_agent=odd)
    await store.grant(GrantOrder("ann", 2, "g-odd", odd, None, context, time.time()))
    await store.spend(VendOrder("ann", "v-odd", "t", 0, 0, None, None, context, time.time()))
    await store.refund(RefundOrder("ann", "v-odd", odd, context, time.time()))
    trail = await store.audit("ann", 10, 0)
    assert [(e.action, e.reason, e.user_agent, e.ip) for e in trail] == [
        ("grant", odd, odd, "::1"),
        ("vend", "", odd, "::1"),
        ("refund", odd, odd, "::1"),
    ]


async def test_concurrent_spends_never_overdraw(store: Store) -> None:
    await store.grant(grant("ann", 10))
    outcomes = await asyncio.gather(*(store.spend(vend("ann", f"r{i}")) for i in range(40)))
    statuses = [o.status for o in outcomes]
    assert statuses.count("charged") == 10 and statuses.count("insufficient") == 30
    assert (await store.balance("ann")).balance == 0
    assert (await verify(store)).ok


async def test_replayed_key_returns_the_first_receipt_and_charges_once(store: Store) -> None:
    await store.grant(grant("ann", 5))
    key = idem("user:ann|vend-token", "k1")
    outcomes = await asyncio.gather(*(store.spend(vend("ann", f"r{i}", key)) for i in range(20)))
    charged = [o for o in outcomes if o.status == "charged"]
    assert len(charged) == 1
    assert {o.receipt.jti for o in outcomes if o.receipt} == {charged[0].receipt.jti}  # type: ignore[union-attr]
    assert (await store.balance("ann")).balance == 4


async def test_a_replay_outlives_the_balance_and_a_refusal_is_not_remembered(
    store: Store,
) -> None:
    await store.grant(grant("ann", 1))
    spent_key, refused_key = idem("user:ann|vend-token", "k1"), idem("user:ann|vend-token", "k2")
    first = await store.spend(vend("ann", "r1", spent_key))
    again = await store.spend(vend("ann", "r2", spent_key))  # the balance is 0 by now
    assert (first.status, again.status) == ("charged", "replayed")
    assert again.receipt == first.receipt
    assert (await store.spend(vend("ann", "r3", refused_key))).status == "insufficient"
    await store.grant(grant("ann", 1, "g2"))
    retried = await store.spend(vend("ann", "r4", refused_key))
    assert retried.status == "charged" and retried.receipt and retried.receipt.request_id == "r4"
    assert (await verify(store)).ok


async def test_key_with_another_fingerprint_is_a_conflict(store: Store) -> None:
    await store.grant(grant("ann", 5))
    await store.spend(vend("ann", "r1", idem("s", "k", "one")))
    assert (await store.spend(vend("ann", "r2", idem("s", "k", "two")))).status == "key_conflict"
    assert (await store.balance("ann")).balance == 4


async def test_keys_are_scoped_per_user(store: Store) -> None:
    await store.grant(grant("ann", 1))
    await store.grant(grant("bob", 1))
    first = await store.spend(vend("ann", "r1", idem("user:ann|vend-token", "shared")))
    second = await store.spend(vend("bob", "r2", idem("user:bob|vend-token", "shared")))
    assert first.status == second.status == "charged"
    assert first.receipt and second.receipt and first.receipt.jti != second.receipt.jti


async def test_grant_is_idempotent_per_key(store: Store) -> None:
    key = idem("admin:ann|credits-add", "g1")
    outcomes = await asyncio.gather(*(store.grant(grant("ann", 7, "g1", key)) for _ in range(15)))
    assert [o.status for o in outcomes].count("granted") == 1
    assert (await store.balance("ann")).balance == 7


async def test_refund_once(store: Store) -> None:
    await store.grant(grant("ann", 1))
    await store.spend(vend("ann", "vend-1"))
    order = RefundOrder("ann", "vend-1", "upstream failed", CTX, time.time())
    outcomes = await asyncio.gather(*(store.refund(order) for _ in range(10)))
    assert sorted(o.status for o in outcomes) == ["already_refunded"] * 9 + ["refunded"]
    assert (await store.balance("ann")).balance == 1
    missing = await store.refund(RefundOrder("ann", "nope", "", CTX, time.time()))
    assert missing.status == "not_found"
    other_user = await store.refund(RefundOrder("bob", "vend-1", "", CTX, time.time()))
    assert other_user.status == "not_found"
    assert (await verify(store)).ok


async def test_idempotency_keys_expire(store: Store) -> None:
    await store.grant(grant("ann", 5))
    past = time.time() - 100
    expired = IdempotencyKey("s", "old", "fp", past + 10)
    await store.spend(vend("ann", "r1", expired, now=past))
    again = await store.spend(vend("ann", "r2", expired, now=time.time()))
    assert again.status == "charged"
    assert (await store.balance("ann")).balance == 3


async def test_windows_count_atomically(store: Store) -> None:
    now = time.time()
    counts = await asyncio.gather(*(store.hit_window("rl-test", 60, now) for _ in range(30)))
    assert sorted(c.count for c in counts) == list(range(1, 31))
    assert all(now < c.reset_at <= now + 60 for c in counts)


async def test_a_vend_counts_itself_in_the_same_window(store: Store) -> None:
    await store.grant(grant("ann", 10))
    now = time.time()
    await store.hit_window("ann", 60, now)
    rate = RateWindow("ann", 3, 60)
    outcomes = [await store.spend(vend("ann", f"r{i}", now=now, rate=rate)) for i in range(4)]
    assert [o.status for o in outcomes] == ["charged", "charged", "rate_limited", "rate_limited"]
    assert [o.window.count for o in outcomes if o.window] == [2, 3, 4, 5]
    trail = await store.audit("ann", 10, 0)
    # Only the window's first refusal is kept; the window's count says how many followed.
    assert [e.action for e in trail][-2:] == ["vend", "vend_rate_limited"]
    assert (await store.balance("ann")).balance == 8


async def test_every_vend_attempt_counts_whatever_its_outcome(store: Store) -> None:
    await store.grant(grant("ann", 1))
    now = time.time()
    rate = RateWindow("ann", 100, 60)
    key = idem("user:ann|vend", "k1")

    def attempt(request_id: str, with_key: IdempotencyKey | None) -> VendOrder:
        return vend("ann", request_id, with_key, now, rate)

    statuses = [
        (outcome.status, outcome.window.count if outcome.window else None)
        for outcome in [
            await store.spend(attempt("r1", key)),
            await store.spend(attempt("r2", key)),
            await store.spend(attempt("r3", None)),
        ]
    ]
    assert statuses == [("charged", 1), ("replayed", 2), ("insufficient", 3)]
    assert (await store.hit_window("ann", 60, now)).count == 4


async def test_a_window_counted_before_the_first_grant_carries_on_after_it(store: Store) -> None:
    now = time.time()
    await store.hit_window("bob", 60, now)
    refused = await store.spend(vend("bob", "r0", now=now, rate=RateWindow("bob", 4, 60)))
    assert (refused.status, refused.window.count if refused.window else None) == (
        "insufficient",
        2,
    )
    await store.grant(grant("bob", 5))
    assert (await store.hit_window("bob", 60, now)).count == 3
    outcomes = [
        await store.spend(vend("bob", f"r{i}", now=now, rate=RateWindow("bob", 4, 60)))
        for i in range(1, 3)
    ]
    assert [o.status for o in outcomes] == ["charged", "rate_limited"]
    assert (await store.hit_window("bob", 60, now + 60)).count == 1  # the next window


async def test_remember_keeps_the_first_response(store: Store) -> None:
    now = time.time()
    first = StoredResponse("fp1", 202, b'{"jobId":"a"}')
    second = StoredResponse("fp2", 202, b'{"jobId":"b"}')
    results = await asyncio.gather(
        store.remember("sc", "k", first, 60, now), store.remember("sc", "k", second, 60, now)
    )
    assert results[0] == results[1]
    assert await store.recall("sc", "k", now) == results[0]
    assert await store.recall("sc", "other", now) is None
    await store.remember("sc", "short", first, 1, now - 10)
    assert await store.recall("sc", "short", now) is None


async def test_cache_ttl(store: Store) -> None:
    now = time.time()
    await store.cache_set("meta:a", b"value", 3600, now)
    assert await store.cache_get("meta:a", now) == b"value"
    await store.cache_set("meta:b", b"value", 1, now - 10)
    assert await store.cache_get("meta:b", now) is None


async def test_audit_entries_do_not_change_after_later_writes(store: Store) -> None:
    await store.grant(grant("ann", 2))
    before = await store.audit("ann", 10, 0)
    await store.spend(vend("ann", "r1"))
    await store.refund(RefundOrder("ann", "r1", "", CTX, time.time()))
    after = await store.audit("ann", 10, 0)
    assert after[: len(before)] == before and len(after) == 3
    page = await store.audit("ann", 2, after[0].id)
    assert page == after[1:3]


async def test_ping(store: Store) -> None:
    assert await store.ping()


def test_sqlite_schema_refuses_ledger_edits_and_negative_balances(tmp_path: object) -> None:
    async def scenario() -> str:
        from engine.store import store_from_url

        url = f"sqlite:///{tmp_path}/immutable.db"
        opened = store_from_url(url)
        await opened.open()
        await opened.grant(grant("ann", 1))
        await opened.close()
        return url

    url = asyncio.run(scenario())
    conn = sqlite3.connect(sqlite_path(url))
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        conn.execute("UPDATE ledger SET delta = 100")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        conn.execute("DELETE FROM ledger")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        conn.execute("UPDATE accounts SET balance = -1")
    append = (
        "INSERT INTO ledger (user_id, action, delta, balance_after, request_id, ip, user_agent, at)"
        " VALUES ('ann', ?, 0, 1, 'r', '', '', '')"
    )
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        conn.execute(append, ("gift",))
    conn.execute(append, ("vend_refused",))  # every real action still passes
    conn.close()


def test_sqlite_file_from_before_account_windows_is_upgraded(tmp_path: object) -> None:
    """A file whose `accounts` lacks the window columns gains them, and keeps its balances."""
    path = f"{tmp_path}/old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE accounts (user_id TEXT PRIMARY KEY,"
        " balance INTEGER NOT NULL CHECK (balance >= 0), updated_at TEXT NOT NULL) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO accounts VALUES ('ann', 2, '2026-01-01T00:00:00.000Z')")
    conn.commit()
    conn.close()

    async def scenario() -> tuple[str, int, int]:
        from engine.store import store_from_url

        for _ in range(2):  # opening an upgraded file again changes nothing
            opened = store_from_url(f"sqlite:///{path}")
            await opened.open()
            await opened.close()
        opened = store_from_url(f"sqlite:///{path}")
        await opened.open()
        now = time.time()
        order = vend("ann", "r1", now=now, rate=RateWindow("ann", 5, 60))
        outcome = await opened.spend(order)
        balance = (await opened.balance("ann")).balance
        await opened.close()
        return outcome.status, balance, outcome.window.count if outcome.window else 0

    assert asyncio.run(scenario()) == ("charged", 1, 1)
