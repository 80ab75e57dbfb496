"""SQLite's `ledger verify` screens the ledger in SQL and re-checks only the users it names;
the screen must never miss what the full per-user check flags.  On a realistic ledger broken
at random (entries edited, inserted, balances changed behind the store's back), the screened
report must equal the one of the full check over every user's stream."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from engine.domain.ledger import LedgerChecker, LedgerReport, verify
from engine.ledger_prefill import run_prefill
from engine.store import SQLiteStore, store_from_url
from engine.store.protocol import LedgerScreener

AT = "2026-01-01T00:00:00.000Z"
ACTIONS = ("vend", "vend_refused", "vend_rate_limited", "grant", "refund")


def _corrupt(path: Path, rng: random.Random, breaks: int) -> None:
    """`breaks` random edits, as a bug or a hand edit would make them: the triggers, the
    one-refund index and the CHECKs that keep such rows out are lifted first."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA ignore_check_constraints=ON")
    db.execute("DROP TRIGGER ledger_is_immutable_update")
    db.execute("DROP INDEX ledger_one_refund_per_vend")
    size = db.execute("SELECT max(id) FROM ledger").fetchone()[0]
    users = [u for (u,) in db.execute("SELECT user_id FROM accounts")]

    def some_entry() -> tuple[int, str, str, str]:
        row = db.execute(
            "SELECT id, user_id, action, request_id FROM ledger WHERE id = ?",
            (rng.randint(1, size),),
        ).fetchone()
        return (int(row[0]), str(row[1]), str(row[2]), str(row[3]))

    for _ in range(breaks):
        entry_id, user, action, request_id = some_entry()
        edit = rng.randrange(9)
        if edit == 0:
            db.execute(
                "UPDATE ledger SET delta = delta + ? WHERE id = ?",
                (rng.choice((-2, -1, 1)), entry_id),
            )
        elif edit == 1:
            db.execute(
                "UPDATE ledger SET balance_after = ? WHERE id = ?", (rng.randint(-1, 9), entry_id)
            )
        elif edit == 2:
            db.execute("UPDATE ledger SET action = ? WHERE id = ?", (rng.choice(ACTIONS), entry_id))
        elif edit == 3:  # another entry's request id (a vend's, a refund's, a grant's)
            db.execute("UPDATE ledger SET request_id = ? WHERE id = ?", (some_entry()[3], entry_id))
        elif edit == 4:
            db.execute("UPDATE ledger SET user_id = ? WHERE id = ?", (rng.choice(users), entry_id))
        elif edit == 5:
            db.execute(
                "UPDATE accounts SET balance = balance + ? WHERE user_id = ?",
                (rng.choice((-1, 1)), user),
            )
        elif edit == 6:  # a second refund, or a charge replayed, appended at the end
            again = "refund" if action == "vend" else "vend"
            delta = 1 if again == "refund" else -1
            db.execute(
                "INSERT INTO ledger (user_id, action, delta, balance_after, request_id, ip,"
                " user_agent, at) VALUES (?,?,?,?,?,'','',?)",
                (user, again, delta, rng.randint(0, 5), request_id, AT),
            )
        elif edit == 7:  # an account without entries, or one whose user lost them
            db.execute(
                "INSERT OR REPLACE INTO accounts (user_id, balance, updated_at) VALUES (?,?,?)",
                (f"ghost-{rng.randrange(5)}", rng.randint(-1, 2), AT),
            )
        else:
            db.execute("DELETE FROM accounts WHERE user_id = ?", (user,))
    db.commit()
    db.close()


async def _full_check(url: str) -> LedgerReport:
    """Every user's stream through the per-user rules: what the screen must agree with."""
    store = store_from_url(url)
    checker = LedgerChecker()
    async for chunk in store.read_ledger(chunk_size=50):
        checker.feed(chunk)
    await store.close()
    return checker.finish()


def _seen(report: LedgerReport) -> tuple[object, ...]:
    violations = sorted((v.kind, v.user_id, v.entry_ids, v.detail) for v in report.violations)
    return (report.users, report.entries, dict(report.actions), report.violation_count, violations)


@pytest.mark.parametrize("seed", range(6))
async def test_the_screen_finds_what_the_full_check_finds_on_a_randomly_broken_ledger(
    tmp_path: Path, seed: int
) -> None:
    url = f"sqlite:///{tmp_path / 'broken.db'}"
    await run_prefill(store_from_url(url), 2000, 40, seed=seed)
    _corrupt(tmp_path / "broken.db", random.Random(seed), breaks=3 + seed * 4)
    store = store_from_url(url)
    assert isinstance(store, SQLiteStore) and isinstance(store, LedgerScreener)
    screened = await verify(store)
    await store.close()
    full = await _full_check(url)
    assert not full.ok  # the edits broke something for the screen to find
    assert _seen(screened) == _seen(full)


async def test_the_screen_names_no_one_on_a_clean_ledger(tmp_path: Path) -> None:
    """Re-checking is for suspects only: a clean prefilled ledger leaves none."""
    url = f"sqlite:///{tmp_path / 'clean.db'}"
    written = await run_prefill(store_from_url(url), 3000, 60, seed=4)
    store = store_from_url(url)
    assert isinstance(store, SQLiteStore)
    seen: list[int] = []
    screen = await store.screen_ledger(seen.append)
    await store.close()
    assert screen.suspects == set()
    assert screen.entries == written.entries == sum(seen)
    assert _seen(await _full_check(url))[:3] == (screen.users, screen.entries, screen.actions)
