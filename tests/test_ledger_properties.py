"""Property: any interleaving of grants, spends and refunds keeps the credit invariants.

Hypothesis draws a batch of operations per user; they run *concurrently* against a real
backend, then the ledger must prove balance = grants − spends + refunds, never negative, and
each refund must name a real vend at most once.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.domain.ledger import verify
from engine.store import store_from_url
from engine.store.records import Context, GrantOrder, RefundOrder, VendOrder

CTX = Context("127.0.0.1", "property-test")
USERS = ("ann", "bob", "cy")

operation = st.one_of(
    st.tuples(st.just("grant"), st.sampled_from(USERS), st.integers(1, 3)),
    st.tuples(st.just("spend"), st.sampled_from(USERS), st.integers(0, 4)),
    st.tuples(st.just("refund"), st.sampled_from(USERS), st.integers(0, 4)),
)


async def _run(url: str, batches: list[list[tuple[str, str, int]]]) -> None:
    store = store_from_url(url)
    await store.open()
    try:
        prefix = uuid.uuid4().hex[:8]
        users = {u: f"{prefix}-{u}" for u in USERS}
        now = time.time()

        async def apply(kind: str, user: str, n: int) -> str:
            uid = users[user]
            if kind == "grant":
                return (
                    await store.grant(
                        GrantOrder(uid, n, f"g{uuid.uuid4().hex}", "", None, CTX, now)
                    )
                ).status
            if kind == "spend":
                rid = f"v{n}-{uuid.uuid4().hex[:4]}"
                order = VendOrder(uid, rid, rid, int(now), int(now) + 900, None, None, CTX, now)
                return (await store.spend(order)).status
            trail = await store.audit(uid, 1000, 0)
            vends = [e.request_id for e in trail if e.action == "vend"]
            target = vends[n % len(vends)] if vends else "none"
            return (await store.refund(RefundOrder(uid, target, "", CTX, now))).status

        for batch in batches:
            await asyncio.gather(*(apply(*op) for op in batch))
        report = await verify(store)
        assert report.ok, report.problems
        for uid in users.values():
            entries = await store.audit(uid, 1000, 0)
            grants = sum(e.delta for e in entries if e.action == "grant")
            spends = sum(1 for e in entries if e.action == "vend")
            refunds = sum(1 for e in entries if e.action == "refund")
            assert (await store.balance(uid)).balance == grants - spends + refunds >= 0
            assert refunds <= spends
    finally:
        await store.close()


batches = st.lists(st.lists(operation, min_size=1, max_size=12), min_size=1, max_size=4)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=batches)
def test_sqlite_ledger_invariants(
    tmp_path_factory: object, batches: list[list[tuple[str, str, int]]]
) -> None:
    path = tmp_path_factory.mktemp("prop") / "ledger.db"  # type: ignore[attr-defined]
    asyncio.run(_run(f"sqlite:///{path}", batches))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=batches)
def test_redis_ledger_invariants(redis_url: str, batches: list[list[tuple[str, str, int]]]) -> None:
    asyncio.run(_run(redis_url, batches))
