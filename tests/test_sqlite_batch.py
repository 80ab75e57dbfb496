"""Group commit keeps each operation's outcome its own."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from pathlib import Path

import pytest

from engine.domain.ledger import verify
from engine.store import SQLiteStore
from engine.store.protocol import StoreUnavailable
from engine.store.records import Context, GrantOrder
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


class _CommitThenRaise:
    """A connection whose next COMMIT succeeds and then raises, as a flaky commit might."""

    def __init__(self, conn: sqlite3.Connection, code: int) -> None:
        self._conn = conn
        self._code = code
        self.faults = 1

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        cursor = self._conn.execute(sql, *args)
        if sql == "COMMIT" and self.faults:
            self.faults -= 1
            fault = sqlite3.OperationalError("injected: commit raised after it succeeded")
            fault.sqlite_errorcode = self._code
            raise fault
        return cursor

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)


@pytest.mark.parametrize("code", [sqlite3.SQLITE_BUSY, sqlite3.SQLITE_IOERR])
@pytest.mark.parametrize("batch_size", [1, 5])
async def test_a_commit_that_raises_after_success_is_never_applied_twice(
    tmp_path: Path, code: int, batch_size: int
) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    await store.open()
    try:
        await store.grant(GrantOrder("ann", 100, "seed", "seed", None, Context(), 1e9))
        faulty = _CommitThenRaise(store._inline_connection(), code)
        store._batch._inline = lambda: faulty  # type: ignore[assignment,return-value]
        orders = [
            GrantOrder("ann", 1, f"g{i}", "grant", None, Context(), 1e9 + i)
            for i in range(batch_size)
        ]
        outcomes = await asyncio.gather(
            *(store.grant(order) for order in orders), return_exceptions=True
        )
        assert faulty.faults == 0
        # Whatever the callers were told, each grant is in the ledger at most once, and the
        # balance agrees with the ledger.
        entries = await store.audit("ann", 500, 0)
        grants = [e.request_id for e in entries if e.request_id.startswith("g")]
        assert sorted(grants) == sorted(set(grants))
        assert len(grants) in {0, batch_size}
        assert (await verify(store)).ok
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(o, StoreUnavailable) for o in failed), failed
    finally:
        await store.close()
