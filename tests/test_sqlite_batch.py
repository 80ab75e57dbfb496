"""Group commit keeps each operation's outcome its own."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from pathlib import Path

import pytest

from engine.store import SQLiteStore
from engine.store.sqlite_batch import run_batch


def _table(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "batch.db", isolation_level=None)
    conn.execute("CREATE TABLE t (v TEXT UNIQUE)")
    return conn


def test_a_failing_operation_is_isolated_and_the_others_commit(tmp_path: Path) -> None:
    conn = _table(tmp_path)

    def insert(value: str):  # type: ignore[no-untyped-def]
        return lambda c: c.execute("INSERT INTO t VALUES (?)", (value,)).rowcount

    outcomes = run_batch(conn, [insert("a"), insert("a"), insert("b")])
    assert outcomes[0] == (True, 1) and outcomes[2] == (True, 1)
    assert outcomes[1][0] is False and isinstance(outcomes[1][1], sqlite3.IntegrityError)
    assert sorted(v for (v,) in conn.execute("SELECT v FROM t")) == ["a", "b"]
    assert not conn.in_transaction


def test_an_operational_error_abandons_the_whole_batch(tmp_path: Path) -> None:
    conn = _table(tmp_path)
    broken = [
        lambda c: c.execute("INSERT INTO t VALUES ('x')"),
        lambda c: c.execute("INSERT INTO missing VALUES (1)"),
    ]
    with pytest.raises(sqlite3.OperationalError):
        run_batch(conn, broken)
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(0,)]


async def test_concurrent_writes_through_the_store_share_batches(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    await store.open()
    try:
        counts = await asyncio.gather(*(store.hit_window("u", 60, 1000.0) for _ in range(100)))
        assert sorted(c.count for c in counts) == list(range(1, 101))
    finally:
        await store.close()


def _wal_restarts(wal: Path) -> int:
    """The WAL header's checkpoint sequence: one more each time a writer starts the WAL over."""
    return int.from_bytes(wal.read_bytes()[12:16], "big")


async def test_the_wal_starts_over_while_writes_never_stop(tmp_path: Path) -> None:
    """Under steady writes a single checkpoint pass never copies the frames committed during
    it, so the WAL never restarted and grew by tens of megabytes a second."""
    store = SQLiteStore(tmp_path / "store.db")
    await store.open()
    stop = asyncio.Event()

    async def write_until_stopped() -> int:
        batches = 0
        while not stop.is_set():
            subjects = (f"s{batches}-{i}" for i in range(20))
            await asyncio.gather(*(store.hit_window(s, 60, 1000.0) for s in subjects))
            batches += 1
        return batches

    writer = asyncio.create_task(write_until_stopped())
    try:
        await store.hit_window("first", 60, 1000.0)
        before = _wal_restarts(tmp_path / "store.db-wal")
        loop = asyncio.get_running_loop()
        for _ in range(5):
            await loop.run_in_executor(None, store.checkpoint)
        stop.set()
        assert await writer > 0
        await store.hit_window("last", 60, 1000.0)
        assert _wal_restarts(tmp_path / "store.db-wal") > before
    finally:
        stop.set()
        await writer
        await store.close()


async def test_writes_wait_for_another_process_holding_the_writer_lock(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    await store.open()
    other_process = os.open(tmp_path / "store.db.writer-lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(other_process, fcntl.LOCK_EX)
        writes = asyncio.gather(*(store.hit_window("u", 60, 1000.0) for _ in range(50)))
        for _ in range(20):
            await asyncio.sleep(0)  # loop turns, in which each retry finds the lock held
        assert not writes.done()
        fcntl.flock(other_process, fcntl.LOCK_UN)
        assert sorted(c.count for c in await writes) == list(range(1, 51))
    finally:
        os.close(other_process)
        await store.close()
