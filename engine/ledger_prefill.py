"""`ledger prefill`: a year of history in minutes, for benchmarks of a grown store.

Each backend writes it in bulk, as the rows and keys its own operations would have left
(`sqlite_prefill`, `redis_prefill`): driving the operations one by one ran at 2–12k entries/s,
hours for the 10M entries the bench's targets name.  Both follow one workload, decision for
decision, like a year of app traffic: a grant when a user starts and for 5 % of operations
after (5, 10, 20 or 30 credits), a refund of a recent vend for 2 %, a remembered admin response
for 2 %, a replayed vend key for 3 % (no entry), and keyed vends for the rest, 70 % of whose
tokens go on to buy their job; a vend on an empty balance is a refusal.  What lands in the
store is what a serving engine writes: real entries, idempotency records, refusals and jobs,
which `ledger verify` and `serve` use as is.

The simulated clock runs over the year before now, so only the last day's idempotency records
are still alive, as after a running engine's purges.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from engine.store import SQLiteStore, sqlite_prefill
from engine.store.protocol import Store
from engine.store.records import Context

YEAR_SECONDS = 365 * 24 * 3600
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
VENDED_TOKEN_TTL_SECONDS = 900
JOB_RETENTION_SECONDS = 7 * 24 * 3600
# Vended tokens that go on to buy their transcription (the rest expire unused).
TRANSCRIBED_SHARE = 0.7
_VEND_FINGERPRINT = "prefill-vend"
_CONTEXTS = [
    Context(ip=f"10.{i % 250}.{i // 250 % 250}.{i % 7 + 1}", user_agent=agent)
    for i, agent in enumerate(["PluctAndroid/2.3.1 (okhttp)", "PluctAndroid/2.4.0 (okhttp)"] * 32)
]
SHAPE = sqlite_prefill.Shape(
    YEAR_SECONDS,
    IDEMPOTENCY_TTL_SECONDS,
    VENDED_TOKEN_TTL_SECONDS,
    JOB_RETENTION_SECONDS,
    TRANSCRIBED_SHARE,
    _VEND_FINGERPRINT,
    _CONTEXTS,
)


@dataclass
class Prefilled:
    entries: int = 0
    users: int = 0
    actions: dict[str, int] = field(default_factory=dict)


async def run_prefill(store: Store, entries: int, users: int, seed: int) -> Prefilled:
    """Append at least `entries` entries (the last batch may add a few more)."""
    finished = time.time()
    await store.open()
    try:
        if isinstance(store, SQLiteStore):
            written, granted, statuses = store.prefill(entries, users, seed, finished, SHAPE)
        else:
            from engine.store import redis_prefill

            bulk = redis_prefill.prefill(store, entries, users, seed, finished, SHAPE)
            written, granted, statuses = await bulk
        return Prefilled(written, granted, dict(sorted(statuses.items())))
    finally:
        await store.close()
