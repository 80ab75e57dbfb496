"""SQLite upkeep off the request path: the expiry purge in small indexed batches, and the WAL
kept under its limit.  (How long a batch holds the loop is measured by
`tools/purge_stall.py`, not asserted here.)"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from engine.store import sqlite as sqlite_module
from engine.store import sqlite_ledger
from engine.store.records import Context, GrantOrder, StoredResponse, VendOrder
from engine.store.sqlite import SQLiteStore
from engine.store.sqlite_ledger import PURGE_MAX_ROWS, PURGE_MIN_ROWS, next_purge_limit

CTX = Context("127.0.0.1", "upkeep-test")


async def test_the_purge_deletes_expired_rows_in_batches_and_keeps_live_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "purge.db")
    await store.open()
    now = time.time()
    expired, live = PURGE_MAX_ROWS * 2 + 7, 25
    for n in range(expired + live):
        ttl = -10 if n < expired else 3600
        response = StoredResponse("fp", 200, b"{}")
        await store.remember("scope", f"k{n}", response, ttl, now)
    with sqlite3.connect(tmp_path / "purge.db") as earlier:  # a claim an earlier engine left
        earlier.execute("INSERT INTO claims VALUES ('c-old', 'me', ?)", (now - 1,))
    earlier.close()
    await store.cache_set("old", b"x", -1, now)
    await store.cache_set("new", b"y", 3600, now)
    batches: list[tuple[int, int, int]] = []  # (limit, deleted, thread)
    batch = sqlite_ledger.purge_batch

    def recorded(conn: sqlite3.Connection, table: str, now: float, limit: int) -> int:
        deleted = batch(conn, table, now, limit)
        batches.append((limit, deleted, threading.get_ident()))
        return deleted

    monkeypatch.setattr(sqlite_ledger, "purge_batch", recorded)
    assert await store.purge_expired(now) == expired + 2
    assert all(PURGE_MIN_ROWS <= limit <= PURGE_MAX_ROWS for limit, _, _ in batches)
    assert all(deleted <= limit for limit, deleted, _ in batches)
    # Never on the event loop's thread: a batch there holds every request for its duration.
    assert threading.get_ident() not in {thread for _, _, thread in batches}
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


async def test_vends_go_on_while_the_purge_runs_and_none_is_lost(tmp_path: Path) -> None:
    """The purge's thread and the loop's group commit share the writers' lock: vends issued
    between (and while) batches all commit, and the purge still deletes what expired."""
    store = SQLiteStore(tmp_path / "both.db")
    await store.open()
    now = time.time()
    await store.grant(GrantOrder("ann", 1000, "g", "", None, CTX, now))
    for n in range(PURGE_MAX_ROWS + 3):
        await store.remember("scope", f"k{n}", StoredResponse("fp", 200, b"{}"), -10, now)

    async def vends() -> None:
        for n in range(200):
            rid = f"v{n}"
            await store.spend(VendOrder("ann", rid, rid, 1, 2, None, None, CTX, now))

    purged, _ = await asyncio.gather(store.purge_expired(now), vends())
    assert purged == PURGE_MAX_ROWS + 3
    assert (await store.balance("ann")).balance == 800
    await store.close()


async def test_purge_batches_and_checkpoints_each_run_holding_the_upkeep_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So they never run at once, in any process: beside a purge a checkpoint never caught up
    with the WAL and paused the writers for long.  (That they did not overlap in one run would
    depend on timing; that each holds the one flock while it runs does not.)"""
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_INTERVAL_SECONDS", 0.0)  # back to back
    store = SQLiteStore(tmp_path / "lock.db")
    loop = asyncio.get_running_loop()
    checkpointed = asyncio.Event()
    held: list[tuple[str, bool]] = []
    checkpoint, batch = store.checkpoint, sqlite_ledger.purge_batch

    def upkeep_taken() -> bool:  # as another process would see it
        with sqlite_ledger.upkeep(str(tmp_path / "lock.db.upkeep-lock"), wait=False) as free:
            return not free

    def recorded_checkpoint() -> None:
        held.append(("checkpoint", upkeep_taken()))
        checkpoint()
        loop.call_soon_threadsafe(checkpointed.set)

    def recorded_batch(conn: sqlite3.Connection, table: str, now: float, limit: int) -> int:
        held.append(("purge", upkeep_taken()))
        return batch(conn, table, now, limit)

    monkeypatch.setattr(store, "checkpoint", recorded_checkpoint)
    monkeypatch.setattr(sqlite_ledger, "purge_batch", recorded_batch)
    await store.open()
    now = time.time()
    for n in range(100):
        await store.remember("scope", f"k{n}", StoredResponse("fp", 200, b"{}"), -10, now)
    assert await store.purge_expired(now) == 100
    await checkpointed.wait()
    await store.close()
    assert {kind for kind, _ in held} == {"checkpoint", "purge"}
    assert all(locked for _, locked in held)


def test_the_purge_limit_shrinks_after_a_slow_batch_and_grows_after_a_quick_one() -> None:
    """The row limit follows how long the last batch held the writers' lock (a pure function
    of the two, so no clock here): a batch stays short whatever a row costs on this file."""
    assert next_purge_limit(256, held_seconds=1.0) == 128
    assert next_purge_limit(PURGE_MIN_ROWS, held_seconds=1.0) == PURGE_MIN_ROWS
    assert next_purge_limit(256, held_seconds=0.0) == 512
    assert next_purge_limit(PURGE_MAX_ROWS, held_seconds=0.0) == PURGE_MAX_ROWS


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


@pytest.mark.parametrize(("cap", "pauses"), [(10, 0), (1_000_000, 1)])
async def test_the_writers_are_paused_only_over_a_small_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: int, pauses: int
) -> None:
    """A reader's snapshot keeps every later frame uncopied, so each pass leaves the same
    backlog: the last pass may pause the writers over it only when it is small (pausing them
    over a purge's tens of MB held every write for up to half a second)."""
    monkeypatch.setattr(sqlite_module, "PAUSED_PASS_MAX_FRAMES", cap)
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_INTERVAL_SECONDS", 3600.0)  # only ours
    store = SQLiteStore(tmp_path / "backlog.db")
    await store.open()
    now = time.time()
    await store.grant(GrantOrder("ann", 1000, "g", "", None, CTX, now))
    reader = sqlite3.connect(tmp_path / "backlog.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM ledger").fetchone()  # its snapshot starts here
    for n in range(100):
        rid = f"v{n}"
        await store.spend(VendOrder("ann", rid, rid, 1, 2, None, None, CTX, now))
    paused = store._batch.writers_paused
    calls: list[int] = []

    def counted() -> object:
        calls.append(1)
        return paused()

    monkeypatch.setattr(store._batch, "writers_paused", counted)
    store.checkpoint()
    assert len(calls) == pauses
    reader.execute("ROLLBACK")
    reader.close()
    await store.close()
