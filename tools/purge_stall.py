"""How long a request waits on the SQLite expiry purge, with millions of rows stored.

    python tools/purge_stall.py --rows 3000000

Fills a fresh store's idempotency table with `--rows` records (half of them expired), then
runs the store's `purge_expired` while a probe measures the event loop: a coroutine that
asks to wake every millisecond and records how late it wakes (a purge that holds the loop
delays every request by as much), and a stream of vends whose latencies are recorded too.
For comparison it then times the old purge (one DELETE per table, a full scan) on the same
rows.  Prints JSON.  A measurement, not a test: the machine's load shows in the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from engine.store import sqlite_ledger
from engine.store.records import Context, GrantOrder, VendOrder
from engine.store.sqlite import SQLiteStore

CTX = Context("127.0.0.1", "purge-stall")


def _fill(path: Path, rows: int, now: float) -> None:
    """Rows straight into the table (not through the store): the purge is what is measured."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    body = b'{"request_id":"req_x","jti":"j","expires_at":1,"balance_after":1,"at":"t"}' * 5
    step = 100_000
    for start in range(0, rows, step):
        conn.executemany(
            "INSERT INTO responses (scope, key, fingerprint, status_code, body, expires_at)"
            " VALUES (?,?,?,?,?,?)",
            (
                (
                    f"user:u{n % 5000}|vend-token",
                    f"k{n}",
                    "fp",
                    200,
                    body,
                    now + (-1 if n % 2 else 3600),
                )
                for n in range(start, min(rows, start + step))
            ),
        )
        conn.commit()
    conn.close()


async def _probe(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        asked = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - asked - 0.001) * 1000)


async def _vends(store: SQLiteStore, stop: asyncio.Event, latencies: list[float]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        now = time.time()
        rid = f"v{n}"
        started = time.perf_counter()
        await store.spend(
            VendOrder("probe", rid, rid, int(now), int(now) + 900, None, None, CTX, now)
        )
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.002)


def _timed_batches(batches: list[tuple[float, float]]) -> None:
    """Record each purge batch's wall and CPU milliseconds: the time it holds the loop.  On a
    loaded machine the CPU time is the figure to trust (wall time includes being descheduled)."""
    purge_batch = sqlite_ledger.purge_batch

    def timed(conn: sqlite3.Connection, table: str, now: float, limit: int) -> int:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return purge_batch(conn, table, now, limit)
        finally:
            batches.append(((time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000))

    sqlite_ledger.purge_batch = timed  # type: ignore[assignment]


async def _measure(path: Path, now: float) -> dict[str, object]:
    batches: list[tuple[float, float]] = []
    _timed_batches(batches)
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.grant(GrantOrder("probe", 10_000_000, "g", "probe", None, CTX, now))
        stop = asyncio.Event()
        lags: list[float] = []
        latencies: list[float] = []
        probes = [
            asyncio.create_task(_probe(stop, lags)),
            asyncio.create_task(_vends(store, stop, latencies)),
        ]
        started = time.perf_counter()
        purged = await store.purge_expired(now)
        seconds = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*probes)
    finally:
        await store.close()
    return {
        "batches": len(batches),
        "batch_wall_ms_max": round(max(b[0] for b in batches), 2),
        "batch_cpu_ms_max": round(max(b[1] for b in batches), 2),
        "batch_cpu_ms_median": round(statistics.median(b[1] for b in batches), 2),
        "purged": purged,
        "purge_seconds": round(seconds, 2),
        "loop_lag_ms_max": round(max(lags), 2),
        "loop_lag_ms_p99": round(statistics.quantiles(lags, n=100)[98], 2)
        if len(lags) > 100
        else None,
        "vends_during_purge": len(latencies),
        "vend_ms_max": round(max(latencies), 2) if latencies else None,
        "vend_ms_p99": round(statistics.quantiles(latencies, n=100)[98], 2)
        if len(latencies) > 100
        else None,
    }


def _old_purge(path: Path, now: float) -> tuple[float, float]:
    """The purge before batches: one DELETE per table, all in one transaction, as the loop ran
    it.  Returns the wall and CPU milliseconds it held its thread (and so the loop)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for table in ("responses", "windows", "claims", "cache"):
        conn.execute(f"DROP INDEX IF EXISTS {table}_by_expiry")  # the old schema had none
    started, cpu = time.perf_counter(), time.thread_time()
    conn.execute("BEGIN IMMEDIATE")
    for table in ("responses", "windows", "claims", "cache"):
        conn.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,))
    conn.execute("ROLLBACK")  # the rows stay for nothing else; only the time counts
    elapsed = (time.perf_counter() - started) * 1000, (time.thread_time() - cpu) * 1000
    conn.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=3_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "purge.db"
        now = time.time()
        asyncio.run(_create(path))
        _fill(path, args.rows, now)
        result: dict[str, object] = {"rows": args.rows, "db_bytes": os.path.getsize(path)}
        old_path = Path(folder) / "old.db"
        _copy(path, old_path)
        result["batched"] = asyncio.run(_measure(path, now))
        wall, cpu = _old_purge(old_path, now)
        result["old_full_scan_wall_ms"], result["old_full_scan_cpu_ms"] = (
            round(wall, 1),
            round(cpu, 1),
        )
    print(json.dumps(result, indent=2))
    return 0


async def _create(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.close()


def _copy(source: Path, target: Path) -> None:
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    src.backup(dst)
    src.close()
    dst.close()


if __name__ == "__main__":
    sys.exit(main())
