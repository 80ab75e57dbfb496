"""Redis history out of RAM: entries older than the hot window move to the archive file, and
`audit` and `ledger verify` read across both; a kill -9 mid-batch loses nothing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from engine.domain.ledger import verify
from engine.store.records import (
    AuditEntry,
    ConsumeOrder,
    RefundOrder,
    VendOrder,
    vend_request_id,
)
from engine.store.redis import RedisStore
from engine.store.redis_archive import Archive, ArchiveSettings
from tests.archived_history import CTX, DAY, history, vend

pytestmark = pytest.mark.redis


def _digest(entries: list[AuditEntry]) -> str:
    import msgspec

    return hashlib.sha256(b"".join(msgspec.json.encode(e) for e in entries)).hexdigest()


@pytest.fixture
async def store(redis_url: str, tmp_path: Path) -> AsyncIterator[RedisStore]:
    settings = ArchiveSettings(tmp_path / "archive.db", hot_seconds=DAY, interval_seconds=3600)
    opened = RedisStore(redis_url, archive=settings)
    await opened.open()
    yield opened
    await opened.close()


async def test_audit_reads_span_archived_and_hot_entries(store: RedisStore, redis_url: str) -> None:
    now = time.time()
    await history(store, "ann", old=6, new=3, now=now)
    before = await store.audit("ann", 100, 0)
    # Four days ago: the ten-day-old entries leave, their vend records stay (a week).
    assert await store.archive_old(now - 4 * DAY) == 7  # the grant and six vends
    client = redis.Redis.from_url(redis_url)
    raw = client.lrange("{u:ann}:ledger", 0, -1)
    trimmed = client.hget("{u:ann}:bal", "trimmed")
    client.close()
    assert len(raw) == 3 and all(raw) and trimmed == b"7"  # out of RAM, ids kept
    assert await store.audit("ann", 100, 0) == before
    pages = [await store.audit("ann", 4, after) for after in (0, 4, 8)]
    assert [[e.id for e in page] for page in pages] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [e for page in pages for e in page] == before
    # New entries after archiving get the next ids, and a refund of an archived vend works
    # while its record is kept; once that has gone too, the refund is refused as archived.
    refund = await store.refund(RefundOrder("ann", "v-ann-0", "late", CTX, now))
    assert refund.status == "refunded" and refund.entry and refund.entry.id == 11
    report = await verify(store)
    assert report.ok, report.problems
    assert report.entries == 11
    assert await store.archive_old(now) == 0  # nothing old is left; a rerun changes nothing
    late = await store.refund(RefundOrder("ann", "v-ann-1", "late", CTX, now))
    assert late.status == "vend_archived"


async def test_an_unconfigured_reader_says_so_instead_of_dropping_entries(
    store: RedisStore, redis_url: str
) -> None:
    now = time.time()
    await history(store, "bob", old=2, new=1, now=now)
    await store.archive_old(now)
    blind = RedisStore(redis_url)
    await blind.open()
    try:
        from engine.store import StoreUnavailable

        with pytest.raises(StoreUnavailable):
            await blind.audit("bob", 10, 0)
    finally:
        await blind.close()


_CRASHING_ARCHIVER = """
import asyncio, sys, time
from pathlib import Path
from engine.store.redis import RedisStore
from engine.store.redis_archive import ArchiveSettings

async def main():
    store = RedisStore(sys.argv[1], archive=ArchiveSettings(Path(sys.argv[2]), 86400.0, 3600.0))
    await store.open()

    async def stalled(user_id, trimmed, count):
        print("committed", flush=True)   # the batch is in the archive, fsynced
        await asyncio.Event().wait()     # and is killed before it is trimmed off
    store._trim = stalled
    await store.archive_old(time.time())

asyncio.run(main())
"""


def _killed_mid_batch(redis_url: str, archive: Path) -> str:
    """Run the archiver in a child process and SIGKILL it once its first batch is on disk."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_ARCHIVER, redis_url, str(archive)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        return child.stdout.readline().strip()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)


async def test_a_kill_mid_batch_loses_nothing_and_a_rerun_finishes_the_job(
    store: RedisStore, redis_url: str, tmp_path: Path
) -> None:
    now = time.time()
    for user in ("cy", "dee"):
        await history(store, user, old=30, new=2, now=now)
    before = {u: await store.audit(u, 500, 0) for u in ("cy", "dee")}
    said = await asyncio.to_thread(_killed_mid_batch, redis_url, tmp_path / "archive.db")
    assert said == "committed"
    archive = Archive(tmp_path / "archive.db")
    assert archive.count() == 31  # one user's batch reached the disk, none of it left RAM
    assert {u: await store.audit(u, 500, 0) for u in ("cy", "dee")} == before
    assert await store.archive_old(now) == 62  # the rerun redoes the batch, then the other user
    assert archive.count() == 62  # no entry twice
    archive.close()
    after = {u: await store.audit(u, 500, 0) for u in ("cy", "dee")}
    assert after == before
    assert {u: _digest(e) for u, e in after.items()} == {u: _digest(e) for u, e in before.items()}
    client = redis.Redis.from_url(redis_url)
    assert client.llen("{u:cy}:ledger") == 2 and client.hget("{u:cy}:bal", "trimmed") == b"31"
    client.close()
    assert (await verify(store)).ok


@pytest.mark.server
def test_a_served_engine_archives_by_its_settings_and_still_serves_every_page(
    redis_url: str, tmp_path: Path
) -> None:
    """AUDIT_HOT_SECONDS=1 and ARCHIVE_INTERVAL_SECONDS=1: the running engine moves entries
    out of RAM within seconds, and the admin audit and `ledger verify` still show them all."""
    from engine.local import LocalEngine
    from tests.e2e import audit_trail, grant

    env = {
        "AUDIT_ARCHIVE_PATH": str(tmp_path / "served-archive.db"),
        "AUDIT_HOT_SECONDS": "1",
        "ARCHIVE_INTERVAL_SECONDS": "1",
    }
    client = redis.Redis.from_url(redis_url)
    with LocalEngine(store_url=redis_url, env=env) as engine:
        grant(engine, "eve", 3)
        headers = engine.user_headers("eve")
        for _ in range(3):
            engine.client.post("/v1/vend-token", json={}, headers=headers).raise_for_status()
        deadline = time.monotonic() + 30
        while client.hget("{u:eve}:bal", "trimmed") != b"4":
            assert time.monotonic() < deadline, "the archiver did not run"
            time.sleep(0.1)
        trail = audit_trail(engine, "eve")
        assert [(e["id"], e["action"]) for e in trail] == [
            (1, "grant"),
            (2, "vend"),
            (3, "vend"),
            (4, "vend"),
        ]
        first = engine.client.get(
            "/v1/admin/audit",
            params={"userId": "eve", "limit": 1},
            headers=engine.admin_headers,
        ).json()
        assert [e["id"] for e in first["entries"]] == [1]
        verdict = engine.ledger_verify()
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    client.close()


async def _old_usedvend(store: RedisStore, user: str, now: float) -> str:
    """A vend in the engine's form whose token bought a job, at `now`; its requestId."""
    jti = os.urandom(16).hex()
    rid = vend_request_id(jti)
    await store.spend(VendOrder(user, rid, jti, int(now), int(now) + 900, None, None, CTX, now))
    order = ConsumeOrder(f"job-{jti[:8]}", user, jti, rid, b"{}", now + 660, now + DAY, now)
    assert await store.consume_token(order) == "consumed"
    await store.accept_job(user, order.job_id, "up", b"{}", now)
    return jti


async def test_vend_records_leave_ram_with_theirhistory(store: RedisStore, redis_url: str) -> None:
    """Past the window (and a week), a vend's `vend:` field and its token's record leave the
    balance hash with the history: the hash is the same size after 10 old vends as after 200,
    a refund of an archived vend is refused `vend_archived`, and hot vends refund once."""
    now = time.time()
    client = redis.Redis.from_url(redis_url)
    await history(store, "few", old=10, new=2, now=now)
    await history(store, "many", old=200, new=0, now=now)
    jti = await _old_usedvend(store, "many", now - 9 * DAY)
    for n in (200, 201):
        await store.spend(vend("many", n, now))
    assert client.exists("{u:many}:tok:" + jti)
    assert client.hlen("{u:many}:bal") == 2 + 203
    await store.archive_old(now)
    assert not client.exists("{u:many}:tok:" + jti)
    for user in ("few", "many"):
        fields = sorted(k.decode() for k in client.hkeys("{u:" + user + "}:bal"))
        hot = [f"vend:v-{user}-{n}" for n in ((10, 11) if user == "few" else (200, 201))]
        assert fields == sorted(["balance", "updated_at", "trimmed", *hot]), fields
    few, many = client.memory_usage("{u:few}:bal"), client.memory_usage("{u:many}:bal")
    assert few is not None and many is not None and many <= few + 64
    refund = RefundOrder("many", "v-many-3", "test", CTX, now)
    assert (await store.refund(refund)).status == "vend_archived"
    hot = RefundOrder("many", "v-many-201", "test", CTX, now)
    assert (await store.refund(hot)).status == "refunded"
    assert (await store.refund(hot)).status == "already_refunded"
    missing = RefundOrder("many", "v-many-999", "test", CTX, now)
    assert (await store.refund(missing)).status == "not_found"
    await store.archive_old(now)  # rerun: nothing changes, nothing breaks
    report = await verify(store)
    assert report.ok, report.problems
