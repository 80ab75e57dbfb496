"""`ledger prefill`: a year of history in minutes, for benchmarks of a grown store.

It drives the store's own domain operations (grant, spend, refund, remember), many at once, so
each backend's batch path does the writing (SQLite's group commit merges one loop turn's
operations into one transaction; Redis's command batcher pipelines them), and what lands in
the store is exactly what a serving engine writes: real entries, real idempotency records,
real refusals, real jobs (tokens that bought their transcription), which `ledger verify`
and `serve` use as is.

The simulated clock runs over the year before now, so idempotency records of all but the last
day have expired; the purge at the end removes them, as a running engine's would have.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from engine.store import SQLiteStore, sqlite_prefill
from engine.store.protocol import Store
from engine.store.records import (
    ConsumeOrder,
    Context,
    GrantOrder,
    GrantOutcome,
    IdempotencyKey,
    JobRecord,
    RefundOrder,
    RefundOutcome,
    SpendOutcome,
    StoredResponse,
    VendOrder,
    vend_request_id,
)


class Target(Protocol):
    """The store operations prefill drives: a `Store`, or SQLite's bulk path."""

    async def spend(self, order: VendOrder) -> SpendOutcome: ...

    async def grant(self, order: GrantOrder) -> GrantOutcome: ...

    async def refund(self, order: RefundOrder) -> RefundOutcome: ...

    async def remember(
        self, scope: str, key: str, response: StoredResponse, ttl_seconds: float, now: float
    ) -> StoredResponse: ...

    async def consume_token(self, order: ConsumeOrder) -> str: ...

    async def accept_job(
        self, user_id: str, job_id: str, upstream_id: str, body: bytes, now: float
    ) -> JobRecord | None: ...


Operation = Callable[[Target], Awaitable[str]]

YEAR_SECONDS = 365 * 24 * 3600
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
VENDED_TOKEN_TTL_SECONDS = 900
JOB_RETENTION_SECONDS = 7 * 24 * 3600
# Vended tokens that go on to buy their transcription (the rest expire unused).
TRANSCRIBED_SHARE = 0.7
OPERATIONS_AT_ONCE = 512
_VEND_FINGERPRINT = "prefill-vend"
_CONTEXTS = [
    Context(ip=f"10.{i % 250}.{i // 250 % 250}.{i % 7 + 1}", user_agent=agent)
    for i, agent in enumerate(["PluctAndroid/2.3.1 (okhttp)", "PluctAndroid/2.4.0 (okhttp)"] * 32)
]


@dataclass
class Prefilled:
    entries: int = 0
    users: int = 0
    actions: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _User:
    user_id: str
    granted: bool = False
    vends: list[str] = field(default_factory=list)  # the last few, for refunds
    keys: list[str] = field(default_factory=list)  # the last few idempotency keys, for replays


class _Workload:
    """Chooses each next operation like a year of app traffic: mostly keyed vends, a grant
    when a user starts and now and then after, a vend on an empty balance (a refusal), a
    refund of a recent vend, a retried request (a replay, no entry), a remembered response."""

    def __init__(self, users: int, seed: int) -> None:
        self._rng = random.Random(seed)
        self._users = [_User(f"prefill-{seed}-{n:07d}") for n in range(users)]
        self._serial = 0

    def user(self) -> _User:
        return self._users[self._rng.randrange(len(self._users))]

    def next_operation(self, now: float) -> Operation:
        user, roll = self.user(), self._rng.random()
        self._serial += 1
        context = _CONTEXTS[self._serial % len(_CONTEXTS)]
        request_id = "req_" + os.urandom(16).hex()
        if not user.granted or roll < 0.05:
            user.granted = True
            # About 0.8 credits an operation against 0.88 vends: some vends find nothing left.
            amount = self._rng.choice((5, 10, 20, 30))
            grant = GrantOrder(user.user_id, amount, request_id, "purchase", None, context, now)
            return lambda store: _status(store.grant(grant))
        if roll < 0.07 and user.vends:
            vend = user.vends.pop(self._rng.randrange(len(user.vends)))
            refund = RefundOrder(user.user_id, vend, "upstream_failed", context, now)
            return lambda store: _status(store.refund(refund))
        if roll < 0.09:
            scope = f"admin|credits-add|{user.user_id}"
            response = StoredResponse("fp", 200, b'{"ok":true}')
            return lambda store: _remembered(
                store.remember(scope, request_id, response, IDEMPOTENCY_TTL_SECONDS, now)
            )
        replay = roll < 0.12 and bool(user.keys)
        key = self._rng.choice(user.keys) if replay else f"app-{self._serial}"
        if not replay:
            user.keys = [*user.keys[-3:], key]
        idem = IdempotencyKey(
            f"user:{user.user_id}|vend-token", key, _VEND_FINGERPRINT, now + IDEMPOTENCY_TTL_SECONDS
        )
        jti = os.urandom(16).hex()  # the engine's form (`token_of_vend` expects it)
        order = VendOrder(
            user_id=user.user_id,
            request_id=vend_request_id(jti),  # as the engine names a vend: after its token
            jti=jti,
            issued_at=int(now),
            expires_at=int(now) + VENDED_TOKEN_TTL_SECONDS,
            client_request_id=key,
            idempotency=idem,
            context=context,
            now=now,
        )
        transcribed = self._rng.random() < TRANSCRIBED_SHARE
        return lambda store: _spend(store, user, order, transcribed)

    @property
    def users(self) -> int:
        return sum(1 for u in self._users if u.granted)


async def _status(outcome: Awaitable[GrantOutcome | RefundOutcome]) -> str:
    return (await outcome).status


async def _remembered(stored: Awaitable[StoredResponse]) -> str:
    await stored
    return "remembered"


async def _spend(store: Target, user: _User, order: VendOrder, transcribed: bool) -> str:
    outcome = await store.spend(order)
    if outcome.status != "charged":
        return outcome.status
    user.vends = [*user.vends[-7:], order.request_id]
    if transcribed:  # the token buys its job: a token record and a job, as a served one
        job_id = "job_" + os.urandom(8).hex()
        consume = ConsumeOrder(
            job_id=job_id,
            user_id=order.user_id,
            jti=order.jti,
            vend_request_id=order.request_id,
            body=b'{"status":"queued","progress":0}',
            hold_until=order.now + 660,
            expires_at=order.now + JOB_RETENTION_SECONDS,
            now=order.now,
        )
        if await store.consume_token(consume) == "consumed":
            body = b'{"status":"completed","progress":100}'
            await store.accept_job(order.user_id, job_id, "up-" + job_id, body, order.now)
    return outcome.status


# Statuses that appended one ledger entry.
_WROTE_ENTRY = {"granted", "charged", "insufficient", "refunded", "rate_limited"}


async def run_prefill(store: Store, entries: int, users: int, seed: int) -> Prefilled:
    """Append at least `entries` entries (the last batch may add a few more)."""
    finished = time.time()
    started = finished - YEAR_SECONDS
    await store.open()
    try:
        if isinstance(store, SQLiteStore) or store.backend == "redis":
            shape = sqlite_prefill.Shape(
                YEAR_SECONDS,
                IDEMPOTENCY_TTL_SECONDS,
                VENDED_TOKEN_TTL_SECONDS,
                JOB_RETENTION_SECONDS,
                TRANSCRIBED_SHARE,
                _VEND_FINGERPRINT,
                _CONTEXTS,
            )
            if isinstance(store, SQLiteStore):
                written, granted, statuses = store.prefill(entries, users, seed, finished, shape)
            else:  # Redis: keys and archive rows in bulk (`redis_prefill`)
                from engine.store import redis_prefill

                bulk = redis_prefill.prefill(store, entries, users, seed, finished, shape)
                written, granted, statuses = await bulk
            return Prefilled(written, granted, dict(sorted(statuses.items())))
        workload = _Workload(users, seed)
        counted: Counter[str] = Counter()
        done = 0
        while done < entries:
            now = started + YEAR_SECONDS * done / entries
            batch = [
                workload.next_operation(now)
                for _ in range(min(OPERATIONS_AT_ONCE, max(1, entries - done)))
            ]
            results = await asyncio.gather(*(operation(store) for operation in batch))
            counted.update(results)
            done += sum(1 for status in results if status in _WROTE_ENTRY)
        await store.purge_expired(time.time())
        return Prefilled(done, workload.users, dict(sorted(counted.items())))
    finally:
        await store.close()
