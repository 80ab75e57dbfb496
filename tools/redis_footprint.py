"""Redis RAM per user after the audit archive, for users with more and more past vends.

    python tools/redis_footprint.py --users 500 --per-user 100 1000

For each count: a throwaway redis-server's database is filled in bulk (`redis_prefill`, no
archive: every entry in RAM, as before archiving) with `users × count` entries of a year that
ended 30 days ago (so all of it is beyond the hot window and the vend records' week, and the
idempotency records and jobs have expired), `used_memory` is read, the archiver moves
everything out (`archive_old`), and `used_memory` is read again.  The issue's target: RAM per
user after archiving ≤ 2 KB whatever the count.  Prints JSON.  A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import redis

from engine import ledger_prefill as lp
from engine.local import RedisServer
from engine.store import redis_prefill
from engine.store.redis import RedisStore
from engine.store.redis_archive import ArchiveSettings
from engine.store.sqlite_prefill import Shape

DAY = 24 * 3600.0
_SHAPE = Shape(
    lp.YEAR_SECONDS,
    lp.IDEMPOTENCY_TTL_SECONDS,
    lp.VENDED_TOKEN_TTL_SECONDS,
    lp.JOB_RETENTION_SECONDS,
    lp.TRANSCRIBED_SHARE,
    lp._VEND_FINGERPRINT,
    lp._CONTEXTS,
)


def _memory(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        client.execute_command("MEMORY", "PURGE")
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def _key_bytes(url: str) -> int:
    """What the keys themselves take (`MEMORY USAGE` of each): `used_memory` also counts the
    scripts' cache and the Lua VM, which do not grow with users and swamp a small run."""
    client = redis.Redis.from_url(url)
    try:
        return sum(int(client.memory_usage(key, samples=0) or 0) for key in client.scan_iter())
    finally:
        client.close()


async def _fill(url: str, entries: int, users: int) -> int:
    store = RedisStore(url)  # no archive: every entry stays in RAM
    await store.open()
    try:
        finished = time.time() - 30 * DAY
        written, _, _ = await redis_prefill.prefill(store, entries, users, 1, finished, _SHAPE)
        return written
    finally:
        await store.close()


async def _archive(url: str, path: Path) -> tuple[int, float]:
    store = RedisStore(url, archive=ArchiveSettings(path, 7 * DAY, 3600.0))
    await store.open()
    try:
        started = time.perf_counter()
        moved = await store.archive_old(time.time())
        return moved, time.perf_counter() - started
    finally:
        await store.close()


def _one(url: str, users: int, per_user: int) -> dict[str, object]:
    redis.Redis.from_url(url).flushall()
    empty = _memory(url)
    written = asyncio.run(_fill(url, users * per_user, users))
    before = _memory(url) - empty
    with tempfile.TemporaryDirectory() as folder:
        moved, seconds = asyncio.run(_archive(url, Path(folder) / "archive.db"))
        after = _memory(url) - empty
    keys = _key_bytes(url)
    return {
        "users": users,
        "entries": written,
        "entriesPerUser": round(written / users, 1),
        "ramBytesPerUserBefore": round(before / users, 1),
        "archived": moved,
        "archiveSeconds": round(seconds, 2),
        "ramBytesPerUserAfter": round(after / users, 1),
        "keyBytesPerUserAfter": round(keys / users, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--per-user", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        _one(server.url, 10, 10)  # loads the scripts: their cache is not per user
        rows = [_one(server.url, args.users, count) for count in args.per_user]
    finally:
        server.close()
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
