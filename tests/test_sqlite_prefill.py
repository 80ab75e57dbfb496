"""SQLite's bulk prefill writes rows, not operations: prove the engine takes them as its own —
`ledger verify` clean, a served engine answering balances and audit trails from them and
vending on top, and the store's operations honouring the records (a used token refuses its
refund, an unused vend refunds once, a last-day key replays)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.domain.ledger import verify
from engine.ledger_prefill import run_prefill
from engine.local import LocalEngine
from engine.store import SQLiteStore, store_from_url
from tests.e2e import audit_trail, balance_of
from tests.prefilled import Picked, assert_serves_as_its_own


async def test_bulk_rows_are_what_the_engine_reads_and_writes_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'grown.db'}"
    written = await run_prefill(store_from_url(url), 4000, 60, seed=3)
    assert written.entries >= 4000
    db = sqlite3.connect(tmp_path / "grown.db")
    user, balance, entries = db.execute(
        "SELECT a.user_id, a.balance, count(*) FROM accounts a JOIN ledger l USING (user_id)"
        " GROUP BY a.user_id ORDER BY count(*) DESC LIMIT 1"
    ).fetchone()
    used_user, used_vend = db.execute(
        "SELECT l.user_id, l.request_id FROM ledger l JOIN vend_tokens t"
        " ON l.request_id = 'req_' || t.jti WHERE l.action = 'vend' LIMIT 1"
    ).fetchone()
    free_user, free_vend = db.execute(
        "SELECT user_id, request_id FROM ledger l WHERE action = 'vend' AND NOT EXISTS"
        " (SELECT 1 FROM vend_tokens t WHERE l.request_id = 'req_' || t.jti) AND NOT EXISTS"
        " (SELECT 1 FROM ledger r WHERE r.action = 'refund' AND r.request_id = l.request_id)"
        " ORDER BY id DESC LIMIT 1"
    ).fetchone()
    scope, key, body = db.execute(
        "SELECT scope, key, body FROM responses WHERE scope LIKE 'user:%' LIMIT 1"
    ).fetchone()
    assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] > 0
    db.close()

    store = store_from_url(url)
    assert isinstance(store, SQLiteStore)
    await store.open()
    try:
        owner = scope.removeprefix("user:").removesuffix("|vend-token")
        picked = Picked((used_user, used_vend), (free_user, free_vend), owner, scope, key)
        await assert_serves_as_its_own(store, written.entries, picked)
        assert key.encode() in body
    finally:
        await store.close()

    with LocalEngine(store_url=url) as engine:
        assert balance_of(engine, user) == balance
        assert len(audit_trail(engine, user)) == entries
        response = engine.client.post("/v1/vend-token", headers=engine.user_headers(user))
        assert response.status_code in (200, 402), response.text
        assert engine.ledger_verify().returncode == 0


def _ledger_indexes(path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger'"
            " AND sql IS NOT NULL ORDER BY name"
        ).fetchall()
    finally:
        db.close()


async def test_a_fresh_bulk_load_rebuilds_the_ledger_indexes_and_one_on_top_keeps_them(
    tmp_path: Path,
) -> None:
    """A fresh store's ledger indexes are dropped for the load and rebuilt after it; a store
    that already has a ledger keeps them throughout.  Either way the file is whole (the
    indexes hold every row) and verifies clean, tokens included."""
    path = tmp_path / "twice.db"
    url = f"sqlite:///{path}"
    store = store_from_url(url)
    await store.open()
    await store.close()
    schema = _ledger_indexes(path)
    assert {name for name, _ in schema} >= {"ledger_by_user", "ledger_one_refund_per_vend"}
    first = await run_prefill(store_from_url(url), 1500, 30, seed=1)
    assert _ledger_indexes(path) == schema
    second = await run_prefill(store_from_url(url), 1500, 30, seed=2)
    assert _ledger_indexes(path) == schema
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    vends_with_jobs = db.execute(
        "SELECT count(*) FROM ledger l JOIN vend_tokens t ON l.request_id = 'req_' || t.jti"
        " WHERE l.action = 'vend' AND t.state = 'used'"
    ).fetchone()[0]
    tokens = db.execute("SELECT count(*) FROM vend_tokens").fetchone()[0]
    db.close()
    assert tokens == vends_with_jobs > 0
    reader = store_from_url(url)
    report = await verify(reader)
    await reader.close()
    assert report.ok, report.problems
    assert report.entries == first.entries + second.entries
