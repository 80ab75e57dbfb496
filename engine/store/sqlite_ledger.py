"""SQLite reads and upkeep that run beside the request path, on a thread of their own:
the streamed ledger for `ledger verify`, and the expiry purge in small batches.

Both are written as plain blocking functions of one connection; `SQLiteStore` decides which
thread runs them and when.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Generator, Iterator

from engine.store import sqlite_ops as ops
from engine.store.records import AuditEntry, LedgerChunk

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
