"""`ledger verify` on SQLite: a screen in SQL that names every user who *might* break an
invariant, so that Python re-checks only those users (`engine.domain.ledger`).

Decoding each row into Python objects was the limit of a Python pass over the ledger (151k
entries/s at 10M); here SQLite does the per-entry work in C, in two queries that run at once
on two connections (`sqlite3` releases the GIL while SQLite steps), each in one read
transaction:

- the *chain* screen sorts the ledger by (user, id) and flags a user if any entry moves the
  wrong way for its action, or its `balanceAfter` is not the previous entry's plus its delta
  (the first entry's: its delta), or that sum is negative.  A user no entry flags has
  `balanceAfter` equal to the running sum at every entry (by induction), never below zero;
  it also counts entries and actions.
- the *request* screen groups vends and refunds by request id and flags every id that is not
  one vend alone or one vend and then one refund of the same user: that covers a vend charged
  twice, a refund of no earlier vend of its user, and a vend refunded twice.
- then, per user with entries, the stored balance must equal the last entry's `balanceAfter`
  (the running sum, for a user the chain screen did not flag), 0 without an account; an
  account without entries must hold 0; no stored balance may be negative.

The screen over-approximates (a request id shared by two users flags both) but never misses:
Python then applies the full rules to each flagged user and prints what is really broken.

Memory is SQLite's: a small page cache per connection and sorters that spill to temporary
files (`temp_store=FILE`), so RSS stays flat however long the ledger grows.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Generator

from engine.store import sqlite_ops as ops
from engine.store.protocol import LedgerScreen
from engine.store.records import AuditEntry, LedgerChunk

Connection = sqlite3.Connection
# Each connection's page cache (the ledger is read once, in file order) and its sorters'
# in-memory runs (SQLite sizes those by the cache): two connections stay well inside 256 MB.
SCREEN_CACHE_KIB = 16 * 1024
# The chain screen reports its progress once per this many ids (a power of two: one `&`).
TICK_IDS = 1 << 16
ACTIONS = ("vend", "vend_refused", "vend_rate_limited", "grant", "refund")

_KIND = " ".join(f"WHEN '{action}' THEN {n}" for n, action in enumerate(ACTIONS, 1))
_COUNTS = ", ".join(f"sum(k = {n})" for n in range(1, len(ACTIONS) + 1))
# The rows go into the sorter as integers where they can (the action as a small number, its
# move already judged): a narrower record sorts faster.  The tick runs once per TICK_IDS rows
# on the way in and once per TICK_IDS (at random ids) on the way out.
_CHAIN = f"""
SELECT count(*), {_COUNTS},
  json_group_array(DISTINCT user_id) FILTER (WHERE bad OR after <> running OR running < 0)
FROM (
  SELECT user_id, id, k, bad, balance_after AS after,
    lag(balance_after, 1, 0) OVER (PARTITION BY user_id ORDER BY id) + delta AS running
  FROM (
    SELECT user_id, id, delta, balance_after, CASE action {_KIND} ELSE 0 END AS k,
      typeof(delta) <> 'integer' OR typeof(balance_after) <> 'integer'
        OR CASE action WHEN 'vend' THEN delta <> -1 WHEN 'refund' THEN delta <> 1
        WHEN 'grant' THEN delta <= 0 ELSE delta <> 0 END AS bad
    FROM ledger NOT INDEXED
    WHERE id & {TICK_IDS - 1} <> 0 OR pluct_tick()
  )
)
WHERE id & {TICK_IDS - 1} <> 0 OR pluct_tick()
"""
_REQUESTS = """
SELECT json_group_array(request_id) FROM (
  SELECT request_id FROM ledger NOT INDEXED WHERE action = 'vend' OR action = 'refund'
  GROUP BY request_id
  HAVING NOT (
    count(*) = 1 AND min(action) = 'vend'
    OR count(*) = 2 AND min(user_id) = max(user_id)
      AND min(action) = 'refund' AND max(action) = 'vend'
      AND max(CASE WHEN action = 'vend' THEN id END) = min(id)
  )
)
"""
_USERS_OF_REQUESTS = """
SELECT json_group_array(DISTINCT user_id) FROM ledger NOT INDEXED
WHERE (action = 'vend' OR action = 'refund')
  AND request_id IN (SELECT value FROM json_each(?))
"""
# `ledger_by_user` walks the users in order without reading the table; each user's last
# entry is one seek down the same index.
_LEDGER_USERS = """
SELECT count(*), json_group_array(user_id) FILTER (WHERE stored <> last) FROM (
  SELECT user_id,
    coalesce((SELECT balance FROM accounts a WHERE a.user_id = l.user_id), 0) AS stored,
    (SELECT balance_after FROM ledger x WHERE x.user_id = l.user_id ORDER BY id DESC LIMIT 1)
      AS last
  FROM ledger l GROUP BY user_id
)
"""
_BARE_ACCOUNTS = """
SELECT count(*) FILTER (WHERE NOT used),
  json_group_array(user_id) FILTER (WHERE balance < 0 OR NOT used AND balance <> 0)
FROM (
  SELECT user_id, balance, EXISTS (SELECT 1 FROM ledger l WHERE l.user_id = a.user_id) AS used
  FROM accounts a
)
"""


def _chain(conn: Connection, screen: LedgerScreen, progress: Callable[[int], None] | None) -> None:
    ticked = 0

    def tick() -> int:
        nonlocal ticked
        if progress is not None:  # half a tick's rows on the way in, half on the way out
            progress(TICK_IDS // 2)
            ticked += TICK_IDS // 2
        return 1

    conn.create_function("pluct_tick", 0, tick)
    entries, *counts, flagged = ops.one(conn.execute(_CHAIN))
    if progress is not None and entries > ticked:  # the ticks undercount: end on the total
        progress(entries - ticked)
    screen.entries = int(entries)
    screen.actions = {a: int(n) for a, n in zip(ACTIONS, counts, strict=True) if n}
    screen.suspects.update(json.loads(flagged))


def _requests_and_balances(conn: Connection, screen: LedgerScreen) -> None:
    requests = ops.one(conn.execute(_REQUESTS))[0]
    if requests != "[]":
        screen.suspects.update(
            json.loads(ops.one(conn.execute(_USERS_OF_REQUESTS, (requests,)))[0])
        )
    users, flagged = ops.one(conn.execute(_LEDGER_USERS))
    bare, flagged_bare = ops.one(conn.execute(_BARE_ACCOUNTS))
    screen.users = int(users) + int(bare)
    screen.suspects.update(json.loads(flagged), json.loads(flagged_bare))


def screen_ledger(
    connect: Callable[[], Connection], progress: Callable[[int], None] | None = None
) -> LedgerScreen:
    """Both screens at once, each on a connection of its own; blocking."""
    screen = LedgerScreen()
    failures: list[BaseException] = []

    def run(work: Callable[[Connection], None]) -> None:
        try:
            conn = connect()
            try:
                conn.execute(f"PRAGMA cache_size=-{SCREEN_CACHE_KIB}")
                conn.execute("PRAGMA temp_store=FILE")
                conn.execute("BEGIN")
                try:
                    work(conn)
                finally:
                    conn.execute("COMMIT")
            finally:
                conn.close()
        except BaseException as exc:  # re-raised on the caller's thread
            failures.append(exc)

    other = threading.Thread(
        target=run, args=(lambda c: _requests_and_balances(c, screen),), name="sqlite-screen"
    )
    other.start()
    run(lambda c: _chain(c, screen, progress))
    other.join()
    if failures:
        raise failures[0]
    return screen


_ENTRIES_OF = f"SELECT {ops.ENTRY_COLUMNS} FROM ledger WHERE user_id = ? ORDER BY id"
_BALANCE_OF = "SELECT balance FROM accounts WHERE user_id = ?"


def user_chunks(
    conn: Connection, users: list[str], chunk_size: int
) -> Generator[list[LedgerChunk], None, None]:
    """Each of `users`' whole history, in user order, as `Store.read_ledger` yields it; each
    user in one read transaction (their balance and entries of one instant)."""
    for user in users:
        conn.execute("BEGIN")
        try:
            account = conn.execute(_BALANCE_OF, (user,)).fetchone()
            balance = None if account is None else int(account[0])
            entries = conn.execute(_ENTRIES_OF, (user,))
            rows = entries.fetchmany(chunk_size)
            yield [LedgerChunk(user, balance, [AuditEntry(*r) for r in rows])]
            while rows := entries.fetchmany(chunk_size):
                yield [LedgerChunk(user, balance, [AuditEntry(*r) for r in rows])]
        finally:
            conn.execute("COMMIT")
