"""SQLite backend: the embedded default, one file, no set-up.

Every write is one `BEGIN IMMEDIATE` transaction run on a single writer thread that owns its
connection; other processes sharing the file wait on SQLite's own lock (`busy_timeout`).  WAL
with `synchronous=NORMAL` means a committed transaction survives a crash of the engine
process (not a power cut of the machine: for that, `synchronous=FULL`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TypeVar

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
from engine.timeutil import iso

T = TypeVar("T")

_ENTRY_COLUMNS = "id, user_id, action, delta, balance_after, request_id, ip, user_agent, at, reason"
_vend_receipt = msgspec.json.Decoder(VendReceipt)
_grant_receipt = msgspec.json.Decoder(GrantReceipt)
_encode = msgspec.json.encode


def _entry(row: tuple[object, ...]) -> AuditEntry:
    return AuditEntry(*row)  # type: ignore[arg-type]


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: the lock is taken up front so it can never fail half-way."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _append(
    conn: sqlite3.Connection,
    user_id: str,
    action: str,
    delta: int,
    balance_after: int,
    request_id: str,
    context: Context,
    at: str,
    reason: str = "",
) -> AuditEntry:
    row = conn.execute(
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
    ).fetchone()
    return _entry(row)


def _current_balance(conn: sqlite3.Connection, user_id: str) -> int:
    row = conn.execute("SELECT balance FROM accounts WHERE user_id = ?", (user_id,)).fetchone()
    return int(row[0]) if row else 0


def _live_response(
    conn: sqlite3.Connection, key: IdempotencyKey, now: float
) -> tuple[str, bytes] | None:
    row = conn.execute(
        "SELECT fingerprint, body FROM responses WHERE scope = ? AND key = ? AND expires_at > ?",
        (key.scope, key.key, now),
    ).fetchone()
    return (row[0], row[1]) if row else None


def _store_response(
    conn: sqlite3.Connection, key: IdempotencyKey, status: int, body: bytes
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO responses (scope, key, fingerprint, status_code, body, expires_at)"
        " VALUES (?,?,?,?,?,?)",
        (key.scope, key.key, key.fingerprint, status, body, key.expires_at),
    )


class SQLiteStore:
    """The `Store` protocol on one SQLite file."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return fn(self._connection())
            except sqlite3.OperationalError as exc:
                # Locked past busy_timeout, disk full, file gone: the transaction rolled back.
                raise StoreUnavailable(f"sqlite: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._writer, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._readers, fn)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        schema = resources.files("engine.store").joinpath("sqlite_schema.sql").read_text()
        await self._write(lambda conn: conn.executescript(schema))

    async def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    async def ping(self) -> bool:
        try:
            await self._read(lambda conn: conn.execute("SELECT 1").fetchone())
        except StoreUnavailable:
            return False
        return True

    # -- credits -------------------------------------------------------------------------
    async def spend(self, order: VendOrder) -> SpendOutcome:
        def tx(conn: sqlite3.Connection) -> SpendOutcome:
            at = iso(order.now)
            with _immediate(conn):
                if order.idempotency is not None:
                    stored = _live_response(conn, order.idempotency, order.now)
                    if stored is not None:
                        if stored[0] != order.idempotency.fingerprint:
                            return SpendOutcome(
                                "key_conflict", _current_balance(conn, order.user_id)
                            )
                        receipt = _vend_receipt.decode(stored[1])
                        return SpendOutcome("replayed", receipt.balance_after, receipt)
                row = conn.execute(
                    "UPDATE accounts SET balance = balance - 1, updated_at = ?"
                    " WHERE user_id = ? AND balance > 0 RETURNING balance",
                    (at, order.user_id),
                ).fetchone()
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
                    return SpendOutcome("insufficient", balance)
                balance = int(row[0])
                _append(
                    conn,
                    order.user_id,
                    Action.VEND,
                    -1,
                    balance,
                    order.request_id,
                    order.context,
                    at,
                )
                receipt = VendReceipt(
                    order.request_id,
                    order.token,
                    order.expires_at,
                    balance,
                    order.client_request_id,
                    at,
                )
                if order.idempotency is not None:
                    _store_response(conn, order.idempotency, 200, _encode(receipt))
                return SpendOutcome("charged", balance, receipt)

        return await self._write(tx)

    async def grant(self, order: GrantOrder) -> GrantOutcome:
        def tx(conn: sqlite3.Connection) -> GrantOutcome:
            at = iso(order.now)
            with _immediate(conn):
                if order.idempotency is not None:
                    stored = _live_response(conn, order.idempotency, order.now)
                    if stored is not None:
                        if stored[0] != order.idempotency.fingerprint:
                            return GrantOutcome("key_conflict")
                        return GrantOutcome("replayed", _grant_receipt.decode(stored[1]))
                (balance,) = conn.execute(
                    "INSERT INTO accounts (user_id, balance, updated_at) VALUES (?,?,?)"
                    " ON CONFLICT (user_id) DO UPDATE SET balance = balance + excluded.balance,"
                    " updated_at = excluded.updated_at RETURNING balance",
                    (order.user_id, order.amount, at),
                ).fetchone()
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
                receipt = GrantReceipt(
                    order.user_id, order.amount, balance, order.request_id, order.reason, at
                )
                if order.idempotency is not None:
                    _store_response(conn, order.idempotency, 200, _encode(receipt))
                return GrantOutcome("granted", receipt)

        return await self._write(tx)

    async def refund(self, order: RefundOrder) -> RefundOutcome:
        def tx(conn: sqlite3.Connection) -> RefundOutcome:
            at = iso(order.now)
            with _immediate(conn):
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
                (balance,) = conn.execute(
                    "UPDATE accounts SET balance = balance + 1, updated_at = ? WHERE user_id = ?"
                    " RETURNING balance",
                    (at, order.user_id),
                ).fetchone()
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

        return await self._write(tx)

    async def record_refusal(
        self, user_id: str, action: str, request_id: str, context: Context, now: float
    ) -> AuditEntry:
        def tx(conn: sqlite3.Connection) -> AuditEntry:
            with _immediate(conn):
                balance = _current_balance(conn, user_id)
                return _append(conn, user_id, action, 0, balance, request_id, context, iso(now))

        return await self._write(tx)

    async def balance(self, user_id: str) -> BalanceView:
        def read(conn: sqlite3.Connection) -> BalanceView:
            row = conn.execute(
                "SELECT balance, updated_at FROM accounts WHERE user_id = ?", (user_id,)
            ).fetchone()
            return BalanceView(int(row[0]), row[1]) if row else BalanceView(0, None)

        return await self._read(read)

    async def audit(self, user_id: str, limit: int, after_id: int) -> list[AuditEntry]:
        def read(conn: sqlite3.Connection) -> list[AuditEntry]:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM ledger WHERE user_id = ? AND id > ?"
                " ORDER BY id LIMIT ?",
                (user_id, after_id, limit),
            )
            return [_entry(row) for row in rows]

        return await self._read(read)

    async def snapshot(self) -> LedgerSnapshot:
        def read(conn: sqlite3.Connection) -> LedgerSnapshot:
            conn.execute("BEGIN")
            try:
                balances = {
                    u: int(b) for u, b in conn.execute("SELECT user_id, balance FROM accounts")
                }
                entries = [
                    _entry(row)
                    for row in conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM ledger ORDER BY id")
                ]
            finally:
                conn.execute("COMMIT")
            return LedgerSnapshot(balances, entries)

        return await self._read(read)

    # -- request bookkeeping -------------------------------------------------------------
    async def hit_window(
        self, key: str, limit: int, window_seconds: int, now: float
    ) -> WindowCount:
        start = now - now % window_seconds
        reset_at = start + window_seconds

        def tx(conn: sqlite3.Connection) -> WindowCount:
            (count,) = conn.execute(
                "INSERT INTO windows (key, count, expires_at) VALUES (?, 1, ?)"
                " ON CONFLICT (key) DO UPDATE SET count = count + 1 RETURNING count",
                (f"{key}@{int(start)}", reset_at),
            ).fetchone()
            return WindowCount(int(count), reset_at)

        return await self._write(tx)

    async def remember(
        self, scope: str, key: str, response: StoredResponse, ttl_seconds: float, now: float
    ) -> StoredResponse:
        def tx(conn: sqlite3.Connection) -> StoredResponse:
            with _immediate(conn):
                row = conn.execute(
                    "SELECT fingerprint, status_code, body FROM responses"
                    " WHERE scope = ? AND key = ? AND expires_at > ?",
                    (scope, key, now),
                ).fetchone()
                if row is not None:
                    return StoredResponse(row[0], int(row[1]), bytes(row[2]))
                slot = IdempotencyKey(scope, key, response.fingerprint, now + ttl_seconds)
                _store_response(conn, slot, response.status_code, response.body)
                return response

        return await self._write(tx)

    async def recall(self, scope: str, key: str, now: float) -> StoredResponse | None:
        def read(conn: sqlite3.Connection) -> StoredResponse | None:
            row = conn.execute(
                "SELECT fingerprint, status_code, body FROM responses"
                " WHERE scope = ? AND key = ? AND expires_at > ?",
                (scope, key, now),
            ).fetchone()
            return StoredResponse(row[0], int(row[1]), bytes(row[2])) if row else None

        return await self._read(read)

    async def claim(self, name: str, owner: str, ttl_seconds: float, now: float) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            with _immediate(conn):
                held = conn.execute(
                    "SELECT 1 FROM claims WHERE name = ? AND expires_at > ?", (name, now)
                ).fetchone()
                if held:
                    return False
                conn.execute(
                    "INSERT OR REPLACE INTO claims (name, owner, expires_at) VALUES (?,?,?)",
                    (name, owner, now + ttl_seconds),
                )
                return True

        return await self._write(tx)

    async def release(self, name: str, owner: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "DELETE FROM claims WHERE name = ? AND owner = ?", (name, owner)
            )
        )

    async def cache_get(self, key: str, now: float) -> bytes | None:
        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT value FROM cache WHERE key = ? AND expires_at > ?", (key, now)
            ).fetchone()
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
        def tx(conn: sqlite3.Connection) -> int:
            removed = 0
            with _immediate(conn):
                for table in ("responses", "windows", "claims", "cache"):
                    removed += conn.execute(
                        f"DELETE FROM {table} WHERE expires_at <= ?",
                        (now,),
                    ).rowcount
            return removed

        return await self._write(tx)
