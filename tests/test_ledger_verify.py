"""`ledger verify` finds each kind of broken invariant, planted behind the store's back, on
SQLite and on Redis; and `pluct-engine ledger verify` exits 0 / 1 / 2 as documented.

Planting writes raw rows (SQLite) or raw list items (Redis) the way a bug or an operator's
hand edit would; the real store operations never write any of these.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import redis

from engine.cli import main
from engine.config import sqlite_path
from engine.domain.ledger import verify
from engine.store import Store, store_from_url
from engine.store.records import Context, GrantOrder, RefundOrder, VendOrder

CTX = Context("127.0.0.1", "verify-test")
AT = "2026-01-01T00:00:00.000Z"


class Planter:
    """Raw writes into one backend: ledger entries and stored balances."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite = sqlite3.connect(sqlite_path(url)) if url.startswith("sqlite") else None
        self._redis = None if self._sqlite else redis.Redis.from_url(url)

    def entry(self, user: str, action: str, delta: int, after: int, request_id: str) -> None:
        if self._sqlite is not None:
            self._sqlite.execute(
                "INSERT INTO ledger (user_id, action, delta, balance_after, request_id, ip,"
                " user_agent, at) VALUES (?,?,?,?,?,?,?,?)",
                (user, action, delta, after, request_id, "", "", AT),
            )
            self._sqlite.commit()
            return
        assert self._redis is not None
        item = {
            "action": action,
            "delta": delta,
            "balanceAfter": after,
            "reason": "",
            "userId": user,
            "requestId": request_id,
            "ip": "",
            "userAgent": "",
            "at": AT,
        }
        self._redis.rpush("{u:" + user + "}:ledger", msgspec.json.encode(item))

    def balance(self, user: str, balance: int) -> None:
        if self._sqlite is not None:
            self._sqlite.execute(
                "INSERT OR REPLACE INTO accounts (user_id, balance, updated_at) VALUES (?,?,?)",
                (user, balance, AT),
            )
            self._sqlite.commit()
            return
        assert self._redis is not None
        self._redis.hset("{u:" + user + "}:bal", mapping={"balance": balance, "updated_at": AT})

    def allow_second_refunds(self) -> None:
        """SQLite's unique index makes a second refund impossible; drop it to plant one."""
        if self._sqlite is not None:
            self._sqlite.execute("DROP INDEX ledger_one_refund_per_vend")
            self._sqlite.commit()

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._redis is not None:
            self._redis.close()


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    opened = store_from_url(url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def plant(url: str, store: Store) -> AsyncIterator[Planter]:
    planter = Planter(url)
    yield planter  # type: ignore[misc]
    planter.close()


async def _history(store: Store, user: str = "ann", vends: int = 3) -> None:
    """A clean history written through the store: a grant, vends, a refund."""
    now = time.time()
    await store.grant(GrantOrder(user, 5, f"g-{user}", "buy", None, CTX, now))
    for n in range(vends):
        rid = f"v-{user}-{n}"
        await store.spend(VendOrder(user, rid, rid, int(now), int(now) + 900, None, None, CTX, now))
    await store.refund(RefundOrder(user, f"v-{user}-0", "failed", CTX, now))


def _kinds(report: object) -> set[str]:
    return {v.kind for v in report.violations}  # type: ignore[attr-defined]


async def test_a_clean_history_verifies(store: Store) -> None:
    for user in ("ann", "bob", "cy"):
        await _history(store, user)
    report = await verify(store)
    assert report.ok, report.problems
    assert (report.users, report.entries) == (3, 15)
    assert report.actions == {"grant": 3, "vend": 9, "refund": 3}


async def test_a_stored_balance_that_the_ledger_does_not_sum_to(
    store: Store, plant: Planter
) -> None:
    await _history(store)
    plant.balance("ann", 9)
    report = await verify(store)
    assert _kinds(report) == {"balance_mismatch"}
    assert report.violations[0].user_id == "ann"


async def test_a_balance_that_went_below_zero(store: Store, plant: Planter) -> None:
    plant.entry("bob", "grant", 1, 1, "g1")
    plant.entry("bob", "vend", -1, 0, "v1")
    plant.entry("bob", "vend", -1, 0, "v2")  # the running sum is -1 here
    plant.balance("bob", 0)
    report = await verify(store)
    assert "negative_balance" in _kinds(report)
    negative = next(v for v in report.violations if v.kind == "negative_balance")
    assert negative.entry_ids == (3,)


async def test_a_refund_of_no_vend(store: Store, plant: Planter) -> None:
    await _history(store)
    plant.entry("ann", "refund", 1, 4, "v-never")
    plant.balance("ann", 4)
    report = await verify(store)
    assert _kinds(report) == {"refund_unlinked"}
    assert "v-never" in report.violations[0].detail


async def test_a_vend_refunded_twice(store: Store, plant: Planter) -> None:
    await _history(store)  # balance 3, v-ann-0 already refunded
    plant.allow_second_refunds()
    plant.entry("ann", "refund", 1, 4, "v-ann-0")
    plant.balance("ann", 4)
    report = await verify(store)
    assert _kinds(report) == {"refund_duplicate"}
    assert len(report.violations[0].entry_ids) == 3  # the vend and both refunds


async def test_a_vend_charged_twice(store: Store, plant: Planter) -> None:
    await _history(store)  # balance 3
    plant.entry("ann", "vend", -1, 2, "v-ann-1")  # the same requestId as an earlier charge
    plant.balance("ann", 2)
    report = await verify(store)
    assert _kinds(report) == {"charged_twice"}


async def test_entries_whose_moves_or_balance_after_are_wrong(store: Store, plant: Planter) -> None:
    plant.entry("cy", "grant", 0, 0, "g0")
    plant.entry("cy", "vend_refused", 1, 1, "r1")
    plant.entry("cy", "grant", 2, 2, "g1")  # the running sum is 3
    plant.balance("cy", 3)
    report = await verify(store)
    assert _kinds(report) == {"bad_delta", "balance_after_mismatch"}


async def test_long_histories_stream_in_chunks(store: Store) -> None:
    now = time.time()
    await store.grant(GrantOrder("dee", 50, "g", "buy", None, CTX, now))
    for n in range(45):
        await store.spend(VendOrder("dee", f"v{n}", f"v{n}", 1, 2, None, None, CTX, now))
    await store.grant(GrantOrder("eve", 1, "g", "buy", None, CTX, now))
    chunks = [chunk async for chunk in store.read_ledger(chunk_size=10)]
    assert max(len(c.entries) for c in chunks) <= 10
    runs = [
        u for n, u in enumerate(c.user_id for c in chunks) if n == 0 or chunks[n - 1].user_id != u
    ]
    assert sorted(runs) == ["dee", "eve"]  # each user's chunks come one after another
    assert sum(len(c.entries) for c in chunks if c.user_id == "dee") == 46
    report = await verify(store)
    assert report.ok and report.entries == 47


# -- the command ----------------------------------------------------------------------------
def test_a_mistyped_path_exits_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo" / "engine.db"
    assert main(["ledger", "verify", "--store", f"sqlite:///{missing}"]) == 2
    assert not missing.parent.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no SQLite store" in err


def test_a_file_that_is_not_a_database_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"this is not a database\n" * 100)
    assert main(["ledger", "verify", "--store", f"sqlite:///{bad}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_an_unreachable_redis_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger", "verify", "--store", "redis://127.0.0.1:9/0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_violations_exit_1_with_their_entry_ids_and_a_json_summary(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def written() -> None:
        store = store_from_url(url)
        await store.open()
        await _history(store)
        await store.close()

    asyncio.run(written())
    planter = Planter(url)
    planter.entry("ann", "refund", 1, 4, "v-never")
    planter.balance("ann", 4)
    planter.close()
    assert main(["ledger", "verify", "--store", url]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION refund_unlinked user=ann entries=6" in out
    assert main(["ledger", "verify", "--store", url, "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is False and summary["violationCount"] == 1
    assert summary["violations"][0]["entryIds"] == [6]
    assert summary["actions"] == {"grant": 1, "refund": 2, "vend": 3}


async def test_sqlite_streams_in_fresh_snapshots_without_splitting_a_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long verify must not hold one read transaction (the WAL could not restart): the
    stream starts a new one every few rows, between two users."""
    from engine.store import sqlite_ledger

    monkeypatch.setattr(sqlite_ledger, "SNAPSHOT_ROWS", 4)
    store = store_from_url(f"sqlite:///{tmp_path / 'snapshots.db'}")
    await store.open()
    for user in ("amy", "ben", "cal", "dan"):
        await _history(store, user, vends=4)  # 6 entries each
    now = time.time()
    await store.grant(GrantOrder("eli", 1, "g", "", None, CTX, now))
    planter = Planter(f"sqlite:///{tmp_path / 'snapshots.db'}")
    planter.balance("fay", 0)  # an account without entries, after the last ledger user
    planter.close()
    began: list[str] = []
    real = sqlite_ledger._users_after

    def counted(conn: sqlite3.Connection, chunk_size: int, after: str) -> sqlite_ledger.Chunks:
        began.append(after)
        return real(conn, chunk_size, after)

    monkeypatch.setattr(sqlite_ledger, "_users_after", counted)
    chunks = [chunk async for chunk in store.read_ledger(chunk_size=3)]
    runs = [c.user_id for n, c in enumerate(chunks) if n == 0 or chunks[n - 1].user_id != c.user_id]
    assert runs == ["amy", "ben", "cal", "dan", "eli", "fay"]
    assert began == ["", "amy", "ben", "cal", "dan"]  # a fresh snapshot after each long user
    report = await verify(store)
    assert report.ok, report.problems
    assert (report.users, report.entries) == (6, 25)
    await store.close()


async def test_prefill_writes_a_realistic_history_that_verifies(url: str) -> None:
    """`ledger prefill` through the store's batch path: grants, vends, refusals, refunds and
    jobs, which `ledger verify` then finds clean."""
    from engine.ledger_prefill import run_prefill

    written = await run_prefill(store_from_url(url), 3000, 100, seed=7)
    assert written.entries >= 3000
    assert {"charged", "granted", "insufficient", "refunded"} <= set(written.actions)
    reader = store_from_url(url)
    await reader.open()
    try:
        report = await verify(reader)
        assert report.ok, report.problems
        assert report.entries == written.entries
        assert {"grant", "vend", "vend_refused", "refund"} <= set(report.actions)
    finally:
        await reader.close()


async def test_request_ids_shared_across_interleaved_users_are_decided_exactly(
    tmp_path: Path,
) -> None:
    """SQLite's screen groups vends and refunds by request id alone: an id two users share
    flags both, and the full check must still tell a real double charge from chance."""
    url = f"sqlite:///{tmp_path / 'collide.db'}"
    store = store_from_url(url)
    await store.open()
    await store.close()
    plant = Planter(url)
    for user in ("ann", "bob"):
        plant.entry(user, "grant", 5, 5, f"g-{user}")
    plant.entry("ann", "vend", -1, 4, "v1")
    plant.entry("bob", "vend", -1, 4, "v1")  # the same id, another user: not a double charge
    plant.entry("ann", "vend", -1, 3, "v2")
    plant.entry("bob", "refund", 1, 5, "v1")
    plant.entry("ann", "vend", -1, 2, "v2")  # charged twice
    plant.entry("bob", "refund", 1, 6, "v9")  # no such vend
    plant.balance("ann", 2)
    plant.balance("bob", 6)
    plant.close()
    reader = store_from_url(url)
    report = await verify(reader)
    await reader.close()
    assert sorted((v.kind, v.user_id, v.entry_ids) for v in report.violations) == [
        ("charged_twice", "ann", (5, 7)),
        ("refund_unlinked", "bob", (8,)),
    ]


async def test_a_value_that_is_not_an_integer_is_a_violation(tmp_path: Path) -> None:
    """SQLite lets text into an INTEGER column; the screen once passed it (in SQL `'x' <= 0`
    is false) and the full check crashed on it: a hand-damaged file is a violation, named."""
    url = f"sqlite:///{tmp_path / 'typed.db'}"
    opened = store_from_url(url)
    await opened.open()
    await _history(opened, "ann")
    planter = Planter(url)
    planter.entry("bo", "grant", 2, 2, "g-bo")
    assert planter._sqlite is not None
    planter._sqlite.execute(
        "INSERT INTO ledger (user_id, action, delta, balance_after, request_id, ip, user_agent,"
        " at) VALUES ('bo', 'grant', 'x', 2, 'g-bo-2', '', '', ?)",
        (AT,),
    )
    planter._sqlite.commit()
    planter.balance("bo", 2)
    planter.close()
    report = await verify(opened)
    await opened.close()
    assert _kinds(report) == {"not_an_integer"}
    assert {v.user_id for v in report.violations} == {"bo"}
