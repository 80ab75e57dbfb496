"""Archived history leaves no trace per entry in Redis: the archiver trims it off the list's
head and counts it in the balance hash, so a user's RAM is the same after 10 past vends as
after 400; stores of the earlier tombstone layout read as before and migrate on the first pass;
two archivers at once archive each entry once and keep every id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from engine.domain.ledger import verify
from engine.store.redis import RedisStore
from engine.store.redis_archive import Archive, ArchiveSettings
from tests.archived_history import DAY, history, vend

pytestmark = pytest.mark.redis


def _settings(path: Path) -> ArchiveSettings:
    return ArchiveSettings(path, hot_seconds=DAY, interval_seconds=3600)


@pytest.fixture
async def store(redis_url: str, tmp_path: Path) -> AsyncIterator[RedisStore]:
    opened = RedisStore(redis_url, archive=_settings(tmp_path / "archive.db"))
    await opened.open()
    yield opened
    await opened.close()


def _user_bytes(client: redis.Redis, user: str) -> int:
    keys = list(client.scan_iter(match="{u:" + user + "}:*"))
    return sum(int(client.memory_usage(key) or 0) for key in keys)


async def test_ram_per_user_does_not_grow_with_archived_vends(
    store: RedisStore, redis_url: str
) -> None:
    now = time.time()
    await history(store, "few", old=10, new=2, now=now)
    await history(store, "many", old=400, new=2, now=now)
    await store.archive_old(now)
    client = redis.Redis.from_url(redis_url)
    few, many = _user_bytes(client, "few"), _user_bytes(client, "many")
    # 400 vend records made the hash a hashtable; with them gone it is compact again.
    assert client.object("encoding", "{u:many}:bal") == b"listpack"
    client.close()
    assert many <= few + 32, (few, many)
    trail = await store.audit("many", 1000, 0)
    assert [e.id for e in trail] == list(range(1, 404))
    assert [e.id for e in await store.audit("many", 3, 400)] == [401, 402, 403]
    late = await store.spend(vend("many", 999, now))
    assert late.status == "charged"
    assert [e.id for e in await store.audit("many", 5, 402)] == [403, 404]
    report = await verify(store)
    assert report.ok, report.problems
    assert report.entries == 13 + 404


async def _tombstoned(store: RedisStore, client: redis.Redis, user: str, archive: Path) -> int:
    """What the earlier archiver left: the first entries in the archive, "" in their places,
    and its cursor; returns how many."""
    raw = client.lrange("{u:" + user + "}:ledger", 0, -1)
    old = len(raw) - 2
    kept = Archive(archive)
    kept.store(user, [(n + 1, item) for n, item in enumerate(raw[:old])])
    kept.close()
    for n in range(old):
        client.lset("{u:" + user + "}:ledger", n, "")
    client.set("{u:" + user + "}:archived", old)
    return old


async def test_a_tombstoned_store_reads_as_before_and_migrates_on_the_first_pass(
    store: RedisStore, redis_url: str, tmp_path: Path
) -> None:
    now = time.time()
    await history(store, "old", old=20, new=2, now=now)
    before = await store.audit("old", 100, 0)
    client = redis.Redis.from_url(redis_url)
    assert await _tombstoned(store, client, "old", tmp_path / "archive.db") == 21
    assert client.lrange("{u:old}:ledger", 0, 0) == [b""]
    assert await store.audit("old", 100, 0) == before
    assert [e.id for e in await store.audit("old", 5, 18)] == [19, 20, 21, 22, 23]
    assert (await verify(store)).ok
    assert await store.archive_old(now) == 0  # the tombstones go; their entries were archived
    assert client.llen("{u:old}:ledger") == 2 and client.hget("{u:old}:bal", "trimmed") == b"21"
    assert not client.exists("{u:old}:archived")
    client.close()
    assert await store.audit("old", 100, 0) == before
    report = await verify(store)
    assert report.ok and report.entries == 23, report.problems


async def test_two_archivers_at_once_archive_each_entry_once(
    store: RedisStore, redis_url: str, tmp_path: Path
) -> None:
    now = time.time()
    for user in ("p", "q", "r"):
        await history(store, user, old=1200, new=3, now=now)  # several batches each
    before = {u: await store.audit(u, 2000, 0) for u in ("p", "q", "r")}
    other = RedisStore(redis_url, archive=_settings(tmp_path / "archive.db"))
    await other.open()
    try:
        await asyncio.gather(store.archive_old(now), other.archive_old(now))
    finally:
        await other.close()
    client = redis.Redis.from_url(redis_url)
    for user in ("p", "q", "r"):
        assert client.hget("{u:" + user + "}:bal", "trimmed") == b"1201"
        assert client.llen("{u:" + user + "}:ledger") == 3
    client.close()
    archive = Archive(tmp_path / "archive.db")
    assert archive.count() == 3 * 1201
    archive.close()
    assert {u: await store.audit(u, 2000, 0) for u in ("p", "q", "r")} == before
    report = await verify(store)
    assert report.ok and report.entries == 3 * 1204, report.problems
