"""Redis RAM per user and per entry before and after the audit archive, on a prefilled store.

    python tools/redis_footprint.py --entries 200000 --users 10000

Starts a throwaway redis-server, runs `ledger prefill` (a year of history), reads
`used_memory`, archives everything older than the hot window (7 days), reads it again, and
times `ledger verify` across Redis and the archive.  Prints JSON.  A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import redis

from engine.local import RedisServer
from engine.store.redis import RedisStore
from engine.store.redis_archive import ArchiveSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_store


def _memory(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        client.execute_command("MEMORY", "PURGE")
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


async def _archive(url: str, path: Path) -> tuple[int, float]:
    store = RedisStore(url, archive=ArchiveSettings(path, 7 * 24 * 3600.0, 3600.0))
    await store.open()
    try:
        started = time.perf_counter()
        moved = await store.archive_old(time.time())
        return moved, time.perf_counter() - started
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        empty = _memory(server.url)
        filled = bench_store.prefill(server.url, args.entries, args.users)
        before = _memory(server.url)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "archive.db"
            moved, seconds = asyncio.run(_archive(server.url, path))
            after = _memory(server.url)
            env = {**os.environ, "AUDIT_ARCHIVE_PATH": str(path)}
            verify = bench_store.verify(server.url, env)
            archive_bytes = path.stat().st_size
        entries, users = int(filled["entries"]), int(filled["users"])  # type: ignore[call-overload]
        print(
            json.dumps(
                {
                    "prefill": filled,
                    "ram_bytes_before": before - empty,
                    "ram_bytes_per_entry_before": round((before - empty) / entries, 1),
                    "ram_bytes_per_user_before": round((before - empty) / users, 1),
                    "archived": moved,
                    "archive_seconds": round(seconds, 2),
                    "archive_file_bytes_per_entry": round(archive_bytes / max(moved, 1), 1),
                    "ram_bytes_after": after - empty,
                    "ram_bytes_per_user_after": round((after - empty) / users, 1),
                    "verify": verify,
                },
                indent=2,
            )
        )
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
