"""SQLite upkeep off the request path: the expiry purge in small indexed batches, and the WAL
kept under its limit.  (How long a batch holds the loop is measured by
`tools/purge_stall.py`, not asserted here.)"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from engine.store import sqlite as sqlite_module
from engine.store import sqlite_ledger
from engine.store.records import Context, GrantOrder, StoredResponse, VendOrder
from engine.store.sqlite import PURGE_BATCH_ROWS, SQLiteStore

CTX = Context("127.0.0.1", "upkeep-test")


async def test_the_purge_deletes_expired_rows_in_batches_and_keeps_live_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "purge.db")
    await store.open()
    now = time.time()
    expired, live = PURGE_BATCH_ROWS * 2 + 7, 25
    for n in range(expired + live):
        ttl = -10 if n < expired else 3600
        response = StoredResponse("fp", 200, b"{}")
        await store.remember("scope", f"k{n}", response, ttl, now)
    with sqlite3.connect(tmp_path / "purge.db") as earlier:  # a claim an earlier engine left
        earlier.execute("INSERT INTO claims VALUES ('c-old', 'me', ?)", (now - 1,))
    earlier.close()
    await store.cache_set("old", b"x", -1, now)
    await store.cache_set("new", b"y", 3600, now)
    sizes: list[int] = []
    batch = sqlite_ledger.purge_batch

    def counted(conn: sqlite3.Connection, table: str, now: float, limit: int) -> int:
        deleted = batch(conn, table, now, limit)
        sizes.append(deleted)
        return deleted

    monkeypatch.setattr(sqlite_ledger, "purge_batch", counted)
    assert await store.purge_expired(now) == expired + 2
    assert max(sizes) == PURGE_BATCH_ROWS  # never more than one batch at once
    assert await store.recall("scope", f"k{expired}", now) is not None
    assert await store.cache_get("new", now) == b"y"
    await store.close()
    conn = sqlite3.connect(tmp_path / "purge.db")
    remaining = conn.execute("SELECT count(*) FROM responses").fetchone()[0]
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT rowid FROM responses WHERE expires_at <= ?"
        " ORDER BY expires_at LIMIT 10",
        (now,),
    ).fetchall()
    conn.close()
    assert remaining == live
    assert "responses_by_expiry" in str(plan)  # a range read of the index, not a scan


async def test_a_wal_past_its_limit_is_truncated_by_the_checkpointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "WAL_LIMIT_BYTES", 64 * 1024)
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_INTERVAL_SECONDS", 3600.0)  # only ours
    store = SQLiteStore(tmp_path / "wal.db")
    await store.open()
    now = time.time()
    await store.grant(GrantOrder("ann", 1000, "g", "", None, CTX, now))
    for n in range(300):
        rid = f"v{n}"
        await store.spend(VendOrder("ann", rid, rid, 1, 2, None, None, CTX, now))
    wal = tmp_path / "wal.db-wal"
    assert wal.stat().st_size > 64 * 1024
    store.checkpoint()
    assert wal.stat().st_size == 0
    await store.close()
