"""The `pluct-engine ledger` commands: `verify` (stream the ledger, check the invariants) and
`prefill` (grow a store with realistic history, for benchmarks of a store a year old).

Exit codes of `verify`: 0 clean, 1 violations (each printed with its entry ids), 2 cannot run
(no such store, not an engine database, store unreachable) — always one line on stderr, never
a traceback, and never a store created where none was.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Callable

from engine.config import ConfigError
from engine.domain.ledger import LedgerReport
from engine.domain.ledger import verify as verify_ledger
from engine.store import SQLiteStore, Store, store_from_url


class CannotRun(Exception):
    """The ledger cannot be read at all: exit 2 with this one line."""


def _open(url: str) -> Store:
    try:
        store = store_from_url(url)
    except ConfigError as exc:
        raise CannotRun(str(exc)) from exc
    if isinstance(store, SQLiteStore) and not store.path.is_file():
        # Opening it would create an empty database, which then verifies "clean".
        raise CannotRun(f"no SQLite store at {store.path}")
    return store


async def _check(store: Store, show_progress: bool) -> LedgerReport:
    if not show_progress:
        return await verify_ledger(store)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    total = await store.ledger_size()
    columns = (
        TextColumn("verifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("entries"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("verify", total=total)
        advance: Callable[[int], None] = lambda n: bar.advance(task, n)  # noqa: E731
        return await verify_ledger(store, advance)


async def _verify(url: str, show_progress: bool) -> LedgerReport:
    store = _open(url)
    try:
        if store.backend != "sqlite":
            await store.open()  # Redis: a ping, so an unreachable server is a clear line
        return await _check(store, show_progress)
    finally:
        await store.close()


def verify(url: str, *, as_json: bool, progress: bool) -> int:
    started, cpu = time.perf_counter(), time.process_time()
    try:
        report = asyncio.run(_verify(url, progress and sys.stderr.isatty()))
    except CannotRun as exc:
        print(f"pluct-engine ledger verify: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Not a database, not an engine database, a store that does not answer: one line.
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"pluct-engine ledger verify: cannot read {url}: {detail}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    if as_json:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        summary = {
            **report.summary(),
            "seconds": round(seconds, 3),
            # On a shared machine the CPU time is what the check itself cost.
            "cpuSeconds": round(time.process_time() - cpu, 3),
            "entriesPerSecond": round(report.entries / seconds) if seconds else 0,
            "peakRssMb": round(peak_mb, 1),
        }
        print(json.dumps(summary))
    else:
        for violation in report.violations:
            print(f"VIOLATION {violation}")
        if report.violation_count > len(report.violations):
            print(f"... and {report.violation_count - len(report.violations)} more")
        verdict = "clean" if report.ok else f"{report.violation_count} violation(s)"
        print(
            f"ledger {verdict}: {report.users} users, {report.entries} entries in {seconds:.1f} s"
        )
    return 0 if report.ok else 1


def prefill(url: str, entries: int, users: int | None, seed: int) -> int:
    from engine.ledger_prefill import run_prefill
    from engine.store.sqlite_prefill import PrefillRefused

    try:
        store = store_from_url(url)
    except ConfigError as exc:
        print(f"pluct-engine ledger prefill: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        written = asyncio.run(run_prefill(store, entries, users or max(1, entries // 20), seed))
    except PrefillRefused as exc:
        print(f"pluct-engine ledger prefill: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "entries": written.entries,
                "users": written.users,
                "actions": written.actions,
                "seconds": round(seconds, 2),
                "entriesPerSecond": round(written.entries / seconds) if seconds else 0,
            }
        )
    )
    return 0
