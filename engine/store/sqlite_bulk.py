"""SQLite's bulk path, for `ledger prefill`: the store's own write operations (the very
`sqlite_ops` / `sqlite_jobs` functions `SQLiteStore` runs), back to back on one connection in
transactions of many thousand operations, with no event-loop hop or group commit per
operation.  What lands in the file is row for row what a serving engine writes.

Only for a store nothing else writes meanwhile: a transaction holds the write lock throughout.
"""

from __future__ import annotations

import sqlite3

from engine.store import sqlite_jobs as jobs
from engine.store import sqlite_ledger
from engine.store import sqlite_ops as ops
from engine.store.records import (
    ConsumeOrder,
    GrantOrder,
    GrantOutcome,
    JobRecord,
    RefundOrder,
    RefundOutcome,
    SpendOutcome,
    StoredResponse,
    VendOrder,
    token_of_vend,
)


class SQLiteBulk:
    """The prefill's subset of `Store`, each call run at once inside the open transaction
    (the `async` methods never suspend, so a caller may await them one after another)."""

    backend = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def purge(self, table: str, now: float) -> int:
        """Every row of `table` expired by `now` (`sqlite_ledger.PURGED_TABLES`)."""
        return sqlite_ledger.purge_batch(self._conn, table, now, -1)

    async def spend(self, order: VendOrder) -> SpendOutcome:
        return ops.spend(self._conn, order)

    async def grant(self, order: GrantOrder) -> GrantOutcome:
        return ops.grant(self._conn, order)

    async def refund(self, order: RefundOrder) -> RefundOutcome:
        return jobs.refund_unused(self._conn, order, token_of_vend(order.vend_request_id))

    async def remember(
        self, scope: str, key: str, response: StoredResponse, ttl_seconds: float, now: float
    ) -> StoredResponse:
        return ops.remember(self._conn, scope, key, response, ttl_seconds, now)

    async def consume_token(self, order: ConsumeOrder) -> str:
        return jobs.consume(self._conn, order)

    async def accept_job(
        self, user_id: str, job_id: str, upstream_id: str, body: bytes, now: float
    ) -> JobRecord | None:
        return jobs.accept(self._conn, user_id, job_id, upstream_id, body, now)
