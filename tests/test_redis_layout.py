"""Records an engine of the earlier Redis layout wrote are still honoured after an upgrade.

That layout kept idempotency records as hashes (`fp`, `body`), vends in a `{u:<user>}:vends`
hash and each ledger entry's id inside its JSON.  A replay of such a key must not charge again,
such a vend must be refundable once, and such entries keep their ids beside new ones.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import msgspec
import pytest
import redis.asyncio as aioredis

from engine.domain.credits import CreditService
from engine.domain.idempotency import fingerprint
from engine.domain.ledger import verify
from engine.domain.ratelimit import RateLimiter
from engine.domain.tokens import TRANSCRIBE_SCOPE, TokenAuthority, UserPrincipal
from engine.store.records import (
    Context,
    GrantOrder,
    IdempotencyKey,
    RefundOrder,
    VendOrder,
    VendReceipt,
)
from engine.store.redis import RedisStore
from tests.conftest import make_settings

CTX = Context(ip="127.0.0.1", user_agent="layout-test")
VEND_FP = fingerprint(b"vend-token")  # what the credit service fingerprints every vend with


@pytest.fixture
async def written_by_earlier_engine(redis_url: str) -> AsyncIterator[RedisStore]:
    """Ann: granted 5, one keyed vend (balance 4), all in the earlier layout."""
    client = aioredis.Redis.from_url(redis_url)
    at = "2026-11-30T10:00:00Z"
    entry = {"userId": "ann", "ip": "127.0.0.1", "userAgent": "old", "at": at}
    grant = {"id": 1, "action": "grant", "delta": 5, "balanceAfter": 5, "reason": "seed"}
    spent = {"id": 2, "action": "vend", "delta": -1, "balanceAfter": 4, "reason": ""}
    receipt = VendReceipt(
        request_id="req-old",
        expires_at=int(time.time()) + 900,
        balance_after=4,
        client_request_id="key-old",
        at=at,
        token="token-old",
    )
    await client.hset("{u:ann}:bal", mapping={"balance": 4, "updated_at": at})
    await client.rpush(
        "{u:ann}:ledger",
        msgspec.json.encode({**grant, **entry, "requestId": "g-old"}),
        msgspec.json.encode({**spent, **entry, "requestId": "req-old"}),
    )
    await client.hset("{u:ann}:vends", "req-old", "vended")
    await client.hset(
        "{u:ann}:idem:user:ann|vend-token:key-old",
        mapping={"fp": VEND_FP, "body": msgspec.json.encode(receipt)},
    )
    await client.aclose()
    store = RedisStore(redis_url)
    await store.open()
    yield store
    await store.close()


def _vend(request_id: str, key: str) -> VendOrder:
    idem = IdempotencyKey("user:ann|vend-token", key, VEND_FP, time.time() + 3600)
    return VendOrder("ann", request_id, f"jti-{request_id}", 0, 0, key, idem, CTX, time.time())


async def test_an_earlier_idempotency_record_replays_without_a_charge(
    written_by_earlier_engine: RedisStore,
) -> None:
    store = written_by_earlier_engine
    replayed = await store.spend(_vend("req-new", "key-old"))
    assert replayed.status == "replayed"
    assert replayed.receipt is not None and replayed.receipt.token == "token-old"
    assert (await store.balance("ann")).balance == 4
    other = IdempotencyKey("user:ann|vend-token", "key-old", "fp-other", time.time() + 3600)
    conflict = await store.spend(
        VendOrder("ann", "req-x", "t", 0, 0, "key-old", other, CTX, time.time())
    )
    assert conflict.status == "key_conflict"


async def test_an_earlier_vend_is_refunded_once(written_by_earlier_engine: RedisStore) -> None:
    store = written_by_earlier_engine
    refunded = await store.refund(RefundOrder("ann", "req-old", "upstream failed", CTX, 0.0))
    assert refunded.status == "refunded" and refunded.entry is not None
    assert (refunded.entry.id, refunded.entry.balance_after) == (3, 5)
    again = await store.refund(RefundOrder("ann", "req-old", "twice", CTX, 0.0))
    assert again.status == "already_refunded"


async def test_earlier_entries_and_new_ones_share_one_sequence_of_ids(
    written_by_earlier_engine: RedisStore,
) -> None:
    store = written_by_earlier_engine
    await store.grant(GrantOrder("ann", 2, "g-new", "more", None, CTX, time.time()))
    charged = await store.spend(_vend("req-new", "key-new"))
    assert charged.status == "charged" and charged.balance == 5
    trail = await store.audit("ann", 10, 0)
    assert [(e.id, e.action, e.balance_after) for e in trail] == [
        (1, "grant", 5),
        (2, "vend", 4),
        (3, "grant", 6),
        (4, "vend", 5),
    ]
    assert [e.id for e in await store.audit("ann", 2, 2)] == [3, 4]
    assert (await verify(store)).ok


async def test_a_replay_of_an_earlier_receipt_returns_the_token_it_stored(
    written_by_earlier_engine: RedisStore, redis_url: str
) -> None:
    """Earlier engines stored the token itself; there is nothing to sign again."""
    settings = make_settings(redis_url)
    store = written_by_earlier_engine
    credits = CreditService(store, TokenAuthority(settings), RateLimiter(store, 0), settings)
    ann = UserPrincipal("ann", frozenset({TRANSCRIBE_SCOPE}))
    vended = await credits.vend(ann, client_key="key-old", claimed_user_id=None, context=CTX)
    assert (vended.replayed, vended.token, vended.receipt.request_id) == (
        True,
        "token-old",
        "req-old",
    )
