"""Group commit keeps each operation's outcome its own."""

from __future__ import annotations

import asyncio
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
