"""SQLite reads and upkeep that run beside the request path, on a thread of their own:
the streamed ledger for `ledger verify`, and the expiry purge in small batches.

Both are written as plain blocking functions of one connection; `SQLiteStore` decides which
thread runs them and when.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Generator, Iterator

from engine.store import sqlite_ops as ops
from engine.store.protocol import IdOrderCheck
from engine.store.records import AuditEntry, LedgerChunk, LedgerRow

Connection = sqlite3.Connection
# `ledger_by_user (user_id, id)` gives this order without a sort, however long the ledger.
_ENTRIES_BY_USER = f"SELECT {ops.ENTRY_COLUMNS} FROM ledger WHERE user_id > ? ORDER BY user_id, id"
_ACCOUNTS_BY_USER = "SELECT user_id, balance FROM accounts WHERE user_id > ? ORDER BY user_id"
# A read transaction keeps the WAL from restarting (a checkpoint cannot pass a reader's
# snapshot), so on a live store a verify taking minutes would let the WAL grow all that
# while: after about this many rows the stream finishes its current user and goes on in a
# fresh transaction.  Each user is still read whole in one snapshot, balance included.
SNAPSHOT_ROWS = 200_000
Chunks = Generator[list[LedgerChunk], None, str | None]


def ledger_chunks(conn: Connection, chunk_size: int) -> Generator[list[LedgerChunk], None, None]:
    """Accounts and entries merged by user id, as lists of chunks of about `chunk_size`
    entries in all: one list per call is what a thread hands back to the loop, so the hop
    costs per thousand entries, not per one.

    User ids are ASCII (`engine.domain` validates them), so SQLite's BINARY order and Python's
    string order agree and the two cursors can be merged here.
    """
    after: str | None = ""
    while after is not None:
        after = yield from _users_after(conn, chunk_size, after)


def _users_after(conn: Connection, chunk_size: int, after: str) -> Chunks:
    """Users after `after`, in one read transaction; returns the last user it finished when it
    stopped for a fresh transaction (`SNAPSHOT_ROWS`), None when it reached the end."""
    conn.execute("BEGIN")
    try:
        accounts = conn.execute(_ACCOUNTS_BY_USER, (after,))
        entries = conn.cursor().execute(_ENTRIES_BY_USER, (after,))
        account = accounts.fetchone()
        # The user of the last chunk, and their balance: their entries may go on in the next
        # batch of rows, whose chunk then continues the same user.
        last: tuple[str, int | None] = ("", None)
        read = 0
        while rows := entries.fetchmany(chunk_size):
            out: list[LedgerChunk] = []
            start = 0
            while start < len(rows):
                user = rows[start][1]
                end = start + 1
                while end < len(rows) and rows[end][1] == user:
                    end += 1
                if user != last[0]:
                    while account is not None and account[0] < user:
                        out.append(LedgerChunk(account[0], int(account[1]), []))
                        account = accounts.fetchone()
                    balance = None
                    if account is not None and account[0] == user:
                        balance = int(account[1])
                        account = accounts.fetchone()
                    last = (user, balance)
                out.append(LedgerChunk(user, last[1], [AuditEntry(*r) for r in rows[start:end]]))
                start = end
            yield out
            read += len(rows)
            if read >= SNAPSHOT_ROWS:
                yield from _rest_of_user(entries, chunk_size, *last)
                return last[0]
        tail: list[LedgerChunk] = []
        while account is not None:
            tail.append(LedgerChunk(account[0], int(account[1]), []))
            if len(tail) >= chunk_size:
                yield tail
                tail = []
            account = accounts.fetchone()
        if tail:
            yield tail
        return None
    finally:
        conn.execute("COMMIT")


def _rest_of_user(
    entries: sqlite3.Cursor, chunk_size: int, user: str, balance: int | None
) -> Generator[list[LedgerChunk], None, None]:
    """The entries of `user` still to come on the cursor (the first row of the next user is
    read and dropped: the next transaction starts after `user`)."""
    while rows := entries.fetchmany(chunk_size):
        same = 0
        while same < len(rows) and rows[same][1] == user:
            same += 1
        if same:
            yield [LedgerChunk(user, balance, [AuditEntry(*r) for r in rows[:same]])]
        if same < len(rows):
            return


# -- `ledger verify`: the table in its own order ---------------------------------------------
# Reading in user order (`ledger_chunks`) walks the table at random, one page per entry once
# the file outgrows the cache; the table's own (id) order reads each page once, in file order.
_ROWS_AFTER = (
    "SELECT id, user_id, action, delta, balance_after, request_id FROM ledger"
    " WHERE id > ? ORDER BY id LIMIT ?"
)
_SUSPECT_ROWS = (
    "SELECT id, user_id, action, request_id FROM ledger"
    " WHERE (action = 'vend' OR action = 'refund') AND request_id IN (SELECT rid FROM suspects)"
    " ORDER BY id"
)
_ACCOUNTS = "SELECT user_id, balance FROM accounts"
SCAN_ROWS = 20_000


def _fetched(cursor: sqlite3.Cursor) -> Iterator[list[LedgerRow]]:
    """The cursor's rows in batches, stepped by a thread of their own one batch ahead: SQLite
    steps without the GIL while the check runs on the batch before."""
    batches: queue.Queue[list[LedgerRow] | BaseException] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def fetch() -> None:
        try:
            while not stop.is_set():
                rows = cursor.fetchmany(SCAN_ROWS)
                batches.put(rows)
                if not rows:
                    return
        except BaseException as exc:  # re-raised on the checking thread
            batches.put(exc)

    reader = threading.Thread(target=fetch, name="sqlite-verify-read", daemon=True)
    reader.start()
    try:
        while True:
            item = batches.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                batches.get_nowait()
            except queue.Empty:
                reader.join(0.01)


def scan_in_id_order(conn: Connection, check: IdOrderCheck) -> None:
    """`IdOrderScanner.scan_ledger`: one sequential pass over the ledger, one pass (in SQLite,
    not Python) over the request ids that pass left in doubt, then the accounts.  Blocking:
    the caller runs it on a thread.

    The pass reads `SNAPSHOT_ROWS` rows per read transaction, so a long verify of a live store
    never holds the WAL back: entries are immutable and ids only grow, so rows read in earlier
    snapshots are still the ledger's.  The last snapshot (the one that reaches the end) also
    reads the suspects and every balance, so balances and sums are of the same instant."""
    last = 0
    while True:
        conn.execute("BEGIN")
        try:
            read = 0
            for rows in _fetched(conn.execute(_ROWS_AFTER, (last, SNAPSHOT_ROWS))):
                check.feed(rows)
                read += len(rows)
                last = rows[-1][0]
            if read < SNAPSHOT_ROWS:
                _decide(conn, check)
                return
        finally:
            conn.execute("COMMIT")


def _decide(conn: Connection, check: IdOrderCheck) -> None:
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS suspects (rid TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("DELETE FROM suspects")
    conn.executemany(
        "INSERT OR IGNORE INTO suspects VALUES (?)", ((r,) for r in check.take_suspects())
    )
    check.resolve(conn.execute(_SUSPECT_ROWS))
    check.finish((user, int(balance)) for user, balance in conn.execute(_ACCOUNTS))


def ledger_size(conn: Connection) -> int:
    """Entries are never deleted (the triggers refuse it), so the largest id is the count."""
    return int(ops.one(conn.execute("SELECT coalesce(max(id), 0) FROM ledger"))[0])


# -- expiry purge ----------------------------------------------------------------------------
# Each purged table, with the key its batch deletes by.  The `*_by_expiry` indexes
# (`sqlite_schema.sql`) make a batch a range read of `limit` index entries, however many rows
# are stored: the purge was a full scan of every table, 411 ms with the loop held at 3M rows.
PURGED_TABLES = {
    "responses": "rowid",
    "windows": "key",
    "claims": "name",
    "cache": "key",
    "jobs": "rowid",
}


# A batch holds the writers' lock, so a vend that arrives meanwhile waits for the rest of it:
# the row limit is paced so that a batch takes about `PURGE_TARGET_SECONDS` on this file and
# machine (a row's cost varies tenfold with how much of the file is cached and how many
# index pages its delete dirties), between the two bounds below.
PURGE_TARGET_SECONDS = 0.005
PURGE_MIN_ROWS = 16
PURGE_MAX_ROWS = 1024
PURGE_FIRST_ROWS = 64


def next_purge_limit(limit: int, held_seconds: float) -> int:
    """The row limit for the batch after one of `limit` rows that held the lock this long:
    halved when it took longer than the target, doubled when it took under half of it (so,
    with a row's cost steady, the doubled batch still ends within the target)."""
    if held_seconds > PURGE_TARGET_SECONDS:
        return max(PURGE_MIN_ROWS, limit // 2)
    if held_seconds < PURGE_TARGET_SECONDS / 2:
        return min(PURGE_MAX_ROWS, limit * 2)
    return limit


@contextlib.contextmanager
def upkeep(lock_path: str, wait: bool) -> Iterator[bool]:
    """The upkeep flock beside the database, held around each purge batch and each checkpoint
    so that the two never run at once in any process sharing the file.  On a descriptor of
    its own each time (a flock belongs to an open file description, so two holders in one
    process exclude each other too).  Yields whether it is held: always when `wait`."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # lets the flock go


def purge_batch(conn: Connection, table: str, now: float, limit: int) -> int:
    """Delete up to `limit` rows of `table` that expired by `now`, oldest expiry first."""
    key = PURGED_TABLES[table]
    cursor = conn.execute(
        f"DELETE FROM {table} WHERE {key} IN"
        f" (SELECT {key} FROM {table} WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
        (now, limit),
    )
    return int(cursor.rowcount)
