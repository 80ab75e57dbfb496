"""SQLite backend: the embedded default, one file, no set-up.

Writes go through `GroupCommitter`: the write operations of one event-loop turn share one
`BEGIN IMMEDIATE` transaction, each in its own savepoint, and nobody is answered before the
COMMIT.  Other processes sharing the file wait on SQLite's own lock.  WAL with
`synchronous=NORMAL` means a committed transaction survives a crash of the engine process
(not a power cut of the machine: for that, `synchronous=FULL`).  Reads run inline; WAL
readers do not wait for writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec

from engine.store.protocol import StoreUnavailable
from engine.store.records import (
    Action,
    AuditEntry,
    BalanceView,
    Context,
    GrantOrder,
    GrantOutcome,
    GrantReceipt,
    IdempotencyKey,
    LedgerSnapshot,
    RefundOrder,
    RefundOutcome,
    SpendOutcome,
    StoredResponse,
    VendOrder,
    VendReceipt,
    WindowCount,
)
from engine.store.sqlite_batch import GroupCommitter
from engine.timeutil import iso

T = TypeVar("T")
CHECKPOINT_INTERVAL_SECONDS = 1.0
Connection = sqlite3.Connection

_ENTRY_COLUMNS = "id, user_id, action, delta, balance_after, request_id, ip, user_agent, at, reason"
_vend_receipt = msgspec.json.Decoder(VendReceipt)
_grant_receipt = msgspec.json.Decoder(GrantReceipt)
_encode = msgspec.json.encode


def _one(cursor: sqlite3.Cursor) -> Any:
    """The one row of a statement, stepped to its end: a statement left half-read keeps its
    connection on an old snapshot, and its next write would fail with SQLITE_BUSY_SNAPSHOT
    once another process has written."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def _entry(row: tuple[object, ...]) -> AuditEntry:
    return AuditEntry(*row)  # type: ignore[arg-type]


def _append(
    conn: Connection,
    user_id: str,
    action: str,
    delta: int,
    balance_after: int,
    request_id: str,
    context: Context,
    at: str,
    reason: str = "",
) -> AuditEntry:
    row = _one(
        conn.execute(
            "INSERT INTO ledger (user_id, action, delta, balance_after, request_id, ip, user_agent,"
            f" at, reason) VALUES (?,?,?,?,?,?,?,?,?) RETURNING {_ENTRY_COLUMNS}",
            (
                user_id,
                action,
                delta,
                balance_after,
                request_id,
                context.ip,
                context.user_agent,
                at,
                reason,
            ),
        )
    )
    return _entry(row)


def _current_balance(conn: Connection, user_id: str) -> int:
    row = _one(conn.execute("SELECT balance FROM accounts WHERE user_id = ?", (user_id,)))
    return int(row[0]) if row else 0


def _count(conn: Connection, subject: str, window_seconds: int, now: float) -> WindowCount:
    start = now - now % window_seconds
    reset_at = start + window_seconds
    (count,) = _one(
        conn.execute(
            "INSERT INTO windows (key, count, expires_at) VALUES (?, 1, ?)"
            " ON CONFLICT (key) DO UPDATE SET count = count + 1 RETURNING count",
            (f"rl:{subject}@{int(start)}", reset_at),
        )
    )
    return WindowCount(int(count), reset_at)


def _stored(conn: Connection, scope: str, key: str, now: float) -> StoredResponse | None:
    row = _one(
        conn.execute(
            "SELECT fingerprint, status_code, body FROM responses"
            " WHERE scope = ? AND key = ? AND expires_at > ?",
            (scope, key, now),
        )
    )
    return StoredResponse(row[0], int(row[1]), bytes(row[2])) if row else None


def _store(conn: Connection, key: IdempotencyKey, status: int, body: bytes) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO responses (scope, key, fingerprint, status_code, body, expires_at)"
        " VALUES (?,?,?,?,?,?)",
        (key.scope, key.key, key.fingerprint, status, body, key.expires_at),
    )


def _spend(conn: Connection, order: VendOrder) -> SpendOutcome:
    at = iso(order.now)
    window = None
    if order.rate is not None:
        window = _count(conn, order.rate.subject, order.rate.window_seconds, order.now)
        if window.count > order.rate.limit:
            balance = _current_balance(conn, order.user_id)
            _append(
                conn,
                order.user_id,
                Action.VEND_RATE_LIMITED,
                0,
                balance,
                order.request_id,
                order.context,
                at,
                "rate_limit_exceeded",
            )
            return SpendOutcome("rate_limited", balance, window=window)
    key = order.idempotency
    if key is not None:
        stored = _stored(conn, key.scope, key.key, order.now)
        if stored is not None:
            if stored.fingerprint != key.fingerprint:
                return SpendOutcome("key_conflict", _current_balance(conn, order.user_id))
            receipt = _vend_receipt.decode(stored.body)
            return SpendOutcome("replayed", receipt.balance_after, receipt, window)
    row = _one(
        conn.execute(
            "UPDATE accounts SET balance = balance - 1, updated_at = ?"
            " WHERE user_id = ? AND balance > 0 RETURNING balance",
            (at, order.user_id),
        )
    )
    if row is None:
        balance = _current_balance(conn, order.user_id)
        _append(
            conn,
            order.user_id,
            Action.VEND_REFUSED,
            0,
            balance,
            order.request_id,
            order.context,
            at,
            "insufficient_credits",
        )
        return SpendOutcome("insufficient", balance, window=window)
    balance = int(row[0])
    _append(conn, order.user_id, Action.VEND, -1, balance, order.request_id, order.context, at)
    receipt = VendReceipt(
        order.request_id, order.token, order.expires_at, balance, order.client_request_id, at
    )
    if key is not None:
        _store(conn, key, 200, _encode(receipt))
    return SpendOutcome("charged", balance, receipt, window)


def _grant(conn: Connection, order: GrantOrder) -> GrantOutcome:
    at = iso(order.now)
    key = order.idempotency
    if key is not None:
        stored = _stored(conn, key.scope, key.key, order.now)
        if stored is not None:
            if stored.fingerprint != key.fingerprint:
                return GrantOutcome("key_conflict")
            return GrantOutcome("replayed", _grant_receipt.decode(stored.body))
    (balance,) = _one(
        conn.execute(
            "INSERT INTO accounts (user_id, balance, updated_at) VALUES (?,?,?)"
            " ON CONFLICT (user_id) DO UPDATE SET balance = balance + excluded.balance,"
            " updated_at = excluded.updated_at RETURNING balance",
            (order.user_id, order.amount, at),
        )
    )
    _append(
        conn,
        order.user_id,
        Action.GRANT,
        order.amount,
        balance,
        order.request_id,
        order.context,
        at,
        order.reason,
    )
    receipt = GrantReceipt(order.user_id, order.amount, balance, order.request_id, order.reason, at)
    if key is not None:
        _store(conn, key, 200, _encode(receipt))
    return GrantOutcome("granted", receipt)


def _refund(conn: Connection, order: RefundOrder) -> RefundOutcome:
    actions = {
        action
        for (action,) in conn.execute(
            "SELECT action FROM ledger WHERE user_id = ? AND request_id = ?"
            " AND action IN ('vend', 'refund')",
            (order.user_id, order.vend_request_id),
        )
    }
    if Action.VEND not in actions:
        return RefundOutcome("not_found")
    if Action.REFUND in actions:
        return RefundOutcome("already_refunded")
    at = iso(order.now)
    (balance,) = _one(
        conn.execute(
            "UPDATE accounts SET balance = balance + 1, updated_at = ? WHERE user_id = ?"
            " RETURNING balance",
            (at, order.user_id),
        )
    )
    entry = _append(
        conn,
        order.user_id,
        Action.REFUND,
        1,
        balance,
        order.vend_request_id,
        order.context,
        at,
        order.reason,
    )
    return RefundOutcome("refunded", entry)


class SQLiteStore:
    """The `Store` protocol on one SQLite file."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._connections_lock = threading.Lock()
        self._inline: Connection | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._batch = GroupCommitter(
            self._inline_connection, self._thread_connection, self._writer, f"{path}.writer-lock"
        )

    # -- plumbing ------------------------------------------------------------------------
    def _connect(self, busy_timeout_ms: int) -> Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        # Checkpoints run on a thread (`_checkpoint_forever`), never inside a commit on the loop.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _inline_connection(self) -> Connection:
        """The event loop's connection: it never waits for a lock (busy_timeout 0)."""
        if self._inline is None:
            self._inline = self._connect(busy_timeout_ms=0)
        return self._inline

    def _thread_connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect(busy_timeout_ms=30_000)
        return conn

    async def _write(self, operation: Callable[[Connection], T]) -> T:
        return cast(T, await self._batch.submit(operation))

    async def _read(self, query: Callable[[Connection], T]) -> T:
        """Inline; a WAL reader waits only in rare recovery cases, and then on a thread."""
        try:
            return query(self._inline_connection())
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise StoreUnavailable(f"sqlite: {exc}") from exc

        def in_thread() -> T:
            try:
                return query(self._thread_connection())
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"sqlite: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._readers, in_thread)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        schema = resources.files("engine.store").joinpath("sqlite_schema.sql").read_text()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._writer, lambda: self._thread_connection().executescript(schema)
        )
        self._checkpointer = loop.create_task(self._checkpoint_forever())

    async def _checkpoint_forever(self) -> None:
        """Fold the WAL back into the database every second, off the event loop (PASSIVE:
        it never blocks a writer, and a busy round is simply retried next time)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_SECONDS)
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(
                    self._readers,
                    lambda: _one(
                        self._thread_connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
                    ),
                )

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._inline = None
        self._batch.close()

    async def ping(self) -> bool:
        try:
            await self._read(lambda conn: _one(conn.execute("SELECT 1")))
        except StoreUnavailable:
            return False
        return True

    # -- credits -------------------------------------------------------------------------
    async def spend(self, order: VendOrder) -> SpendOutcome:
        return await self._write(lambda conn: _spend(conn, order))

    async def grant(self, order: GrantOrder) -> GrantOutcome:
        return await self._write(lambda conn: _grant(conn, order))

    async def refund(self, order: RefundOrder) -> RefundOutcome:
        return await self._write(lambda conn: _refund(conn, order))

    async def balance(self, user_id: str) -> BalanceView:
        def read(conn: Connection) -> BalanceView:
            row = _one(
                conn.execute(
                    "SELECT balance, updated_at FROM accounts WHERE user_id = ?", (user_id,)
                )
            )
            return BalanceView(int(row[0]), row[1]) if row else BalanceView(0, None)

        return await self._read(read)

    async def audit(self, user_id: str, limit: int, after_id: int) -> list[AuditEntry]:
        def read(conn: Connection) -> list[AuditEntry]:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM ledger WHERE user_id = ? AND id > ?"
                " ORDER BY id LIMIT ?",
                (user_id, after_id, limit),
            )
            return [_entry(row) for row in rows]

        return await self._read(read)

    async def snapshot(self) -> LedgerSnapshot:
        def read(conn: Connection) -> LedgerSnapshot:
            conn.execute("BEGIN")
            try:
                accounts = conn.execute("SELECT user_id, balance FROM accounts")
                balances = {user: int(balance) for user, balance in accounts}
                rows = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM ledger ORDER BY id")
                entries = [_entry(row) for row in rows]
            finally:
                conn.execute("COMMIT")
            return LedgerSnapshot(balances, entries)

        return await self._read(read)

    # -- request bookkeeping -------------------------------------------------------------
    async def hit_window(self, subject: str, window_seconds: int, now: float) -> WindowCount:
        return await self._write(lambda conn: _count(conn, subject, window_seconds, now))

    async def remember(
        self, scope: str, key: str, response: StoredResponse, ttl_seconds: float, now: float
    ) -> StoredResponse:
        def write(conn: Connection) -> StoredResponse:
            stored = _stored(conn, scope, key, now)
            if stored is not None:
                return stored
            slot = IdempotencyKey(scope, key, response.fingerprint, now + ttl_seconds)
            _store(conn, slot, response.status_code, response.body)
            return response

        return await self._write(write)

    async def recall(self, scope: str, key: str, now: float) -> StoredResponse | None:
        return await self._read(lambda conn: _stored(conn, scope, key, now))

    async def claim(self, name: str, owner: str, ttl_seconds: float, now: float) -> bool:
        def write(conn: Connection) -> bool:
            held = _one(
                conn.execute("SELECT 1 FROM claims WHERE name = ? AND expires_at > ?", (name, now))
            )
            if held:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO claims (name, owner, expires_at) VALUES (?,?,?)",
                (name, owner, now + ttl_seconds),
            )
            return True

        return await self._write(write)

    async def release(self, name: str, owner: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "DELETE FROM claims WHERE name = ? AND owner = ?", (name, owner)
            )
        )

    async def cache_get(self, key: str, now: float) -> bytes | None:
        def read(conn: Connection) -> bytes | None:
            row = _one(
                conn.execute("SELECT value FROM cache WHERE key = ? AND expires_at > ?", (key, now))
            )
            return bytes(row[0]) if row else None

        return await self._read(read)

    async def cache_set(self, key: str, value: bytes, ttl_seconds: float, now: float) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO cache (key, value, expires_at) VALUES (?,?,?)",
                (key, value, now + ttl_seconds),
            )
        )

    async def purge_expired(self, now: float) -> int:
        def write(conn: Connection) -> int:
            return sum(
                conn.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,)).rowcount
                for table in ("responses", "windows", "claims", "cache")
            )

        return await self._write(write)
