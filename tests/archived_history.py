"""A Redis user history that straddles the archive window, for the archive and trim tests."""

from __future__ import annotations

from engine.store.records import Context, GrantOrder, VendOrder
from engine.store.redis import RedisStore

CTX = Context("127.0.0.1", "archive-test")
DAY = 24 * 3600.0


def vend(user: str, n: int, now: float) -> VendOrder:
    rid = f"v-{user}-{n}"
    return VendOrder(user, rid, rid, int(now), int(now) + 900, None, None, CTX, now)


async def history(store: RedisStore, user: str, old: int, new: int, now: float) -> None:
    """`old` vends ten days ago and `new` ones now, after a grant ten days ago."""
    await store.grant(
        GrantOrder(user, old + new + 5, f"g-{user}", "buy", None, CTX, now - 10 * DAY)
    )
    for n in range(old):
        await store.spend(vend(user, n, now - 10 * DAY + n))
    for n in range(old, old + new):
        await store.spend(vend(user, n, now))
