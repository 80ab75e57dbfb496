"""Redis's bulk prefill writes keys and archive rows, not operations: prove the engine takes
them as its own — `ledger verify` clean, the archive holding the old history and Redis only
the hot tail, a served engine answering balances and audit trails from both and vending on
top, and the store's operations honouring the records (a used token refuses its refund, an
unused recent vend refunds once, an old one is archived, a last-day key replays)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from engine.ledger_prefill import run_prefill
from engine.local import LocalEngine
from engine.store.records import RefundOrder
from engine.store.redis import RedisStore
from engine.store.redis_archive import Archive, ArchiveSettings
from tests.e2e import audit_trail, balance_of
from tests.prefilled import CONTEXT, Picked, assert_serves_as_its_own

pytestmark = pytest.mark.redis


def _owner(key: bytes) -> str:
    name = key.decode()
    return name[3 : name.index("}")]


async def test_bulk_keys_are_what_the_engine_reads_and_writes_on(
    redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "archive.db"
    settings = ArchiveSettings(path)  # the defaults: a week hot
    written = await run_prefill(RedisStore(redis_url, archive=settings), 4000, 60, seed=3)
    assert written.entries >= 4000
    archive = Archive(path)
    archived = archive.count()
    archive.close()
    client = redis.Redis.from_url(redis_url)
    listed = sum(client.llen(key) for key in client.scan_iter(match="{u:*}:ledger"))
    assert archived + listed == written.entries and 0 < listed < archived / 10
    user = max((_owner(k) for k in client.scan_iter(match="{u:*}:bal")), key=str)
    used_key = next(client.scan_iter(match="{u:*}:tok:*"))
    used_user, used_vend = _owner(used_key), "req_" + used_key.decode().rsplit(":", 1)[1]
    free_user = free_vend = ""
    for key in client.scan_iter(match="{u:*}:bal"):
        for name, state in client.hgetall(key).items():
            jti = name.decode().removeprefix("vend:req_")
            tok = key.decode().replace(":bal", ":tok:" + jti)
            if name.startswith(b"vend:") and state == b"vended" and not client.exists(tok):
                free_user, free_vend = _owner(key), name.decode().removeprefix("vend:")
    idem = next(client.scan_iter(match="{u:*}:idem:*"))
    owner, idem_name = _owner(idem), idem.decode().split(":idem:", 1)[1]
    scope, key = idem_name.rsplit(":", 1)
    assert next(client.scan_iter(match="{u:*}:job:*"), None) is not None
    client.close()

    store = RedisStore(redis_url, archive=settings)
    await store.open()
    try:
        picked = Picked((used_user, used_vend), (free_user, free_vend), owner, scope, key)
        await assert_serves_as_its_own(store, written.entries, picked)
        now, context = time.time(), CONTEXT
        oldest = next(e for e in await store.audit(user, 500, 0) if e.action == "vend")
        old = RefundOrder(user, oldest.request_id, "test", context, now)
        assert (await store.refund(old)).status == "vend_archived"
        assert await store.archive_old(now) == 0  # the archiver finds nothing left to move
        balance = (await store.balance(user)).balance
    finally:
        await store.close()

    env = {"AUDIT_ARCHIVE_PATH": str(path)}
    with LocalEngine(store_url=redis_url, env=env) as engine:
        trail = audit_trail(engine, user)
        assert balance_of(engine, user) == balance
        assert [e["id"] for e in trail] == list(range(1, len(trail) + 1))
        response = engine.client.post("/v1/vend-token", headers=engine.user_headers(user))
        assert response.status_code in (200, 402), response.text
        verdict = engine.ledger_verify()
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
