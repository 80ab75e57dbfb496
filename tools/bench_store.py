"""What the bench reads from the store itself, beside the HTTP it measures.

- `spendable`: the bench users' balances summed, straight from the store, so the bench counts
  the credits a run really spent (a 200 that replayed an idempotency key spends nothing).
- `prefill`: `pluct-engine ledger prefill` into a store before its engine starts.
- `footprint`: the store's size on disk (SQLite file and WAL) or in RAM (Redis `used_memory`).
- `verify`: `pluct-engine ledger verify --json`, with its wall time and peak RSS.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import redis

from engine.config import sqlite_path


def spendable(store_url: str, users: list[str]) -> int:
    """The sum of `users`' balances now."""
    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(sqlite_path(store_url))
        try:
            total = 0
            for start in range(0, len(users), 500):
                part = users[start : start + 500]
                marks = ",".join("?" * len(part))
                row = conn.execute(
                    f"SELECT coalesce(sum(balance), 0) FROM accounts WHERE user_id IN ({marks})",
                    part,
                ).fetchone()
                total += int(row[0])
            return total
        finally:
            conn.close()
    client = redis.Redis.from_url(store_url)
    try:
        pipe = client.pipeline(transaction=False)
        for user in users:
            pipe.hget("{u:" + user + "}:bal", "balance")
        return sum(int(value or 0) for value in pipe.execute())
    finally:
        client.close()


def prefill(store_url: str, entries: int, users: int | None) -> dict[str, object]:
    command = [sys.executable, "-m", "engine", "ledger", "prefill", "--store", store_url]
    command += ["--entries", str(entries)]
    if users:
        command += ["--users", str(users)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def footprint(store_url: str) -> dict[str, int]:
    """Bytes the store takes: on disk for SQLite, in RAM (and AOF) for Redis."""
    if store_url.startswith("sqlite"):
        path = sqlite_path(store_url)
        wal = Path(f"{path}-wal")
        return {
            "disk_bytes": path.stat().st_size if path.exists() else 0,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        }
    client = redis.Redis.from_url(store_url)
    try:
        memory = client.info("memory")
        persistence = client.info("persistence")
        return {
            "ram_bytes": int(memory["used_memory"]),
            "aof_bytes": int(persistence.get("aof_current_size", 0)),
        }
    finally:
        client.close()


def verify(store_url: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """`ledger verify --json` in a child process: its verdict, entries/s and peak RSS."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "engine", "ledger", "verify", "--store", store_url, "--json"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=3600,
    )
    seconds = time.perf_counter() - started
    summary: dict[str, object] = {"returncode": done.returncode, "seconds": round(seconds, 2)}
    if done.returncode in (0, 1):
        report = json.loads(done.stdout)
        entries = int(report["entries"])
        summary.update(
            ok=report["ok"],
            entries=entries,
            actions=report["actions"],
            violations=report["violationCount"],
            entries_per_second=report["entriesPerSecond"],  # the pass itself, no start-up
            cpu_seconds=report["cpuSeconds"],
            peak_rss_mb=report["peakRssMb"],
        )
    else:
        summary["error"] = done.stderr.strip()
    return summary
