"""How long a request waits on the SQLite expiry purge, with millions of rows stored.

    python tools/purge_stall.py --rows 3000000 [--old]

Fills a fresh store's idempotency table with `--rows` records (half of them expired), then
runs two phases on that same file and store, each with the same probes: a coroutine that
asks to wake every millisecond and records how late it wakes (the event loop's lag), and a
stream of vends, each one's [start, end] recorded.

1. purge: the store's `purge_expired`, every batch's [start, end] recorded on the thread
   that ran it (the writer's);
2. baseline: no purge, the vend stream alone for as long as the purge took.

Each vend's "waited on purge" is how much of its [start, end] overlapped a purge batch: a
vend issued while a batch holds the writers' lock waits for the rest of it.  The store's
checkpoints (`_checkpoint_forever`) and their pauses of the writers are recorded the same
way, so the slowest vends of each phase can be attributed.  With `--old`, it then times the
old purge (one DELETE per table, a full scan) on a copy of the rows.  Prints JSON.  A
measurement, not a test: the machine's load shows in the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from engine.store import sqlite_batch, sqlite_ledger
from engine.store.records import Context, GrantOrder, VendOrder
from engine.store.sqlite import SQLiteStore

CTX = Context("127.0.0.1", "purge-stall")
Span = tuple[float, float]  # perf_counter seconds: one clock for every thread


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


class Spans:
    """What held the writers, as spans: purge batches (with the thread that ran each), the
    store's checkpoints, and the checkpoints' pauses of the writers."""

    def __init__(self) -> None:
        self.purge: list[Span] = []
        self.purge_rows: list[int] = []
        self.purge_cpu: list[float] = []  # seconds of the writer thread's CPU, per batch
        self.purge_delete: list[float] = []  # of which in the DELETE (the rest: BEGIN, COMMIT)
        self.purge_on_loop = 0
        self.checkpoints: list[Span] = []
        self.pauses: list[Span] = []
        self.truncations: list[Span] = []
        self.wal_at_checkpoint: list[int] = []
        self.loop_thread = threading.get_ident()

    def watch(self, store: SQLiteStore) -> None:
        run_batch = sqlite_batch.run_batch

        def timed(conn: sqlite3.Connection, operations: list[sqlite_batch.Operation]) -> object:
            purge = [
                op
                for op in operations
                if isinstance(op, functools.partial) and op.func is sqlite_ledger.purge_batch
            ]
            if not purge:
                return run_batch(conn, operations)
            self.purge_rows.append(int(purge[0].keywords["limit"]))
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return run_batch(conn, operations)
            finally:
                self.purge.append((started, time.perf_counter()))
                self.purge_cpu.append(time.thread_time() - cpu)
                self.purge_on_loop += threading.get_ident() == self.loop_thread

        sqlite_batch.run_batch = timed  # type: ignore[assignment]
        purge_batch = sqlite_ledger.purge_batch

        def timed_delete(conn: sqlite3.Connection, table: str, now: float, limit: int) -> int:
            started = time.perf_counter()
            try:
                return purge_batch(conn, table, now, limit)
            finally:
                self.purge_delete.append(time.perf_counter() - started)

        sqlite_ledger.purge_batch = timed_delete
        checkpoint, paused = store.checkpoint, store._batch.writers_paused
        truncate = store._truncate_wal

        def timed_truncate(conn: sqlite3.Connection) -> None:
            started = time.perf_counter()
            try:
                truncate(conn)
            finally:
                self.truncations.append((started, time.perf_counter()))

        def timed_checkpoint() -> None:
            self.wal_at_checkpoint.append(store._wal_bytes())
            started = time.perf_counter()
            try:
                checkpoint()
            finally:
                self.checkpoints.append((started, time.perf_counter()))

        @contextlib.contextmanager
        def timed_pause() -> Iterator[None]:
            with paused():
                started = time.perf_counter()
                try:
                    yield
                finally:
                    self.pauses.append((started, time.perf_counter()))

        store.checkpoint = timed_checkpoint  # type: ignore[method-assign]
        store._truncate_wal = timed_truncate  # type: ignore[method-assign]
        store._batch.writers_paused = timed_pause  # type: ignore[method-assign]


def _overlap(span: Span, spans: list[Span], ends: list[float]) -> float:
    """Seconds of `span` covered by `spans` (sorted, disjoint; `ends` their ends)."""
    start, end = span
    total = 0.0
    for i in range(bisect.bisect_right(ends, start), len(spans)):
        s, e = spans[i]
        if s >= end:
            break
        total += min(e, end) - max(s, start)
    return total


def _ms(values: list[float]) -> dict[str, float | int | None]:
    """Count, max, p99 and median of seconds, in milliseconds."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "max": None, "p99": None, "median": None}
    return {
        "n": len(ordered),
        "max": round(ordered[-1] * 1000, 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "median": round(statistics.median(ordered) * 1000, 2),
    }


async def _probe(stop: asyncio.Event, lags: list[Span]) -> None:
    """Spans from when the probe should have woken to when it did."""
    while not stop.is_set():
        asked = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((asked + 0.001, time.perf_counter()))


async def _vends(store: SQLiteStore, stop: asyncio.Event, spans: list[Span], tag: str) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        now = time.time()
        rid = f"{tag}{n}"
        started = time.perf_counter()
        await store.spend(
            VendOrder("probe", rid, rid, int(now), int(now) + 900, None, None, CTX, now)
        )
        spans.append((started, time.perf_counter()))
        await asyncio.sleep(0.002)


async def _phase(
    store: SQLiteStore, spans: Spans, tag: str, now: float, seconds: float | None
) -> dict[str, object]:
    """The probes around a purge (`seconds` None) or around a sleep of `seconds`."""
    stop = asyncio.Event()
    lags: list[Span] = []
    vends: list[Span] = []
    probes = [
        asyncio.create_task(_probe(stop, lags)),
        asyncio.create_task(_vends(store, stop, vends, tag)),
    ]
    marks = len(spans.purge), len(spans.checkpoints), len(spans.pauses), len(spans.truncations)
    started = time.perf_counter()
    result: dict[str, object] = {}
    if seconds is None:
        result["purged"] = await store.purge_expired(now)
    else:
        await asyncio.sleep(seconds)
    result["seconds"] = round(time.perf_counter() - started, 2)
    stop.set()
    await asyncio.gather(*probes)
    purge = spans.purge[marks[0] :]
    checkpoints = spans.checkpoints[marks[1] :]
    pauses = sorted(spans.pauses[marks[2] :])
    purge_ends = [e for _, e in purge]
    truncations = spans.truncations[marks[3] :]
    cp_ends, pause_ends = [e for _, e in checkpoints], [e for _, e in pauses]
    trunc_ends = [e for _, e in truncations]

    def attributed(span: Span) -> dict[str, float]:
        return {
            "ms": round((span[1] - span[0]) * 1000, 2),
            "on_purge_ms": round(_overlap(span, purge, purge_ends) * 1000, 2),
            "in_checkpoint_ms": round(_overlap(span, checkpoints, cp_ends) * 1000, 2),
            "in_writer_pause_ms": round(_overlap(span, pauses, pause_ends) * 1000, 2),
            "in_wal_truncation_ms": round(_overlap(span, truncations, trunc_ends) * 1000, 2),
        }

    waited = [_overlap(v, purge, purge_ends) for v in vends]
    slow = [v for v in vends if v[1] - v[0] > 0.05]
    worst = sorted(vends, key=lambda v: v[0] - v[1])[:5]
    worst_lags = sorted(lags, key=lambda v: v[0] - v[1])[:3]
    result |= {
        "vend_ms": _ms([e - s for s, e in vends]),
        "vend_waited_on_purge_ms": _ms(waited),
        "vends_that_waited_on_purge": sum(w > 0 for w in waited),
        "vends_over_50ms": {
            "n": len(slow),
            "mostly_in_writer_pause": sum(
                _overlap(v, pauses, pause_ends) > (v[1] - v[0]) / 2 for v in slow
            ),
            "waited_over_50ms_on_purge": sum(_overlap(v, purge, purge_ends) > 0.05 for v in slow),
        },
        "loop_lag_ms": _ms([max(0.0, e - s) for s, e in lags]),
        "checkpoints": _ms([e - s for s, e in checkpoints]),
        "writer_pauses": _ms([e - s for s, e in pauses]),
        "wal_truncations": _ms([e - s for s, e in truncations]),
        "wal_mib_at_checkpoint_max": round(
            max(spans.wal_at_checkpoint[marks[1] :], default=0) / 2**20, 1
        ),
        "worst_vends": [attributed(v) for v in worst],
        "worst_loop_lags": [attributed(v) for v in worst_lags],
    }
    if seconds is None:
        result["purge_batches"] = _ms([e - s for s, e in purge])
        result["purge_batches_cpu"] = _ms(spans.purge_cpu[marks[0] :])
        longest = max(range(len(purge)), key=lambda i: purge[i][1] - purge[i][0])
        result["longest_batch_cpu_ms"] = round(spans.purge_cpu[marks[0] + longest] * 1000, 2)
        result["longest_batch_delete_ms"] = round(spans.purge_delete[marks[0] + longest] * 1000, 2)
        result["purge_batches_on_loop_thread"] = spans.purge_on_loop
        rows = spans.purge_rows[marks[0] :]
        result["purge_batch_rows"] = [min(rows), statistics.median(rows), max(rows)]
    return result


async def _measure(path: Path, now: float) -> dict[str, object]:
    spans = Spans()
    store = SQLiteStore(path)
    await store.open()
    spans.watch(store)
    try:
        await store.grant(GrantOrder("probe", 10_000_000, "g", "probe", None, CTX, now))
        purge = await _phase(store, spans, "p", now, None)
        baseline = await _phase(store, spans, "b", now, float(purge["seconds"]))  # type: ignore[arg-type]
    finally:
        await store.close()
    return {"purge": purge, "baseline": baseline}


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
    parser.add_argument("--old", action="store_true", help="also time the old full-scan purge")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "purge.db"
        now = time.time()
        asyncio.run(_create(path))
        _fill(path, args.rows, now)
        result: dict[str, object] = {
            "rows": args.rows,
            "db_bytes": os.path.getsize(path),
            "load_average": os.getloadavg(),
        }
        old_path = Path(folder) / "old.db"
        if args.old:
            _copy(path, old_path)
        result |= asyncio.run(_measure(path, now))
        if args.old:
            wall, cpu = _old_purge(old_path, now)
            result["old_full_scan_wall_ms"] = round(wall, 1)
            result["old_full_scan_cpu_ms"] = round(cpu, 1)
        result["load_average_after"] = os.getloadavg()
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
