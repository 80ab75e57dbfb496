"""The SQL of each domain operation, as functions of one connection inside one transaction.

`SQLiteStore` decides *when* and in which transaction they run (group commit); this module is
*what* each does.  None of them begins or commits: the caller's transaction makes each atomic.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from engine.store.records import (
    UNFUNDED_REFUSALS_KEPT_PER_MINUTE,
    Action,
    AuditEntry,
    Context,
    GrantOrder,
    GrantOutcome,
    GrantReceipt,
    IdempotencyKey,
    RefundOrder,
    RefundOutcome,
    RefusalOrder,
    SpendOutcome,
    StoredResponse,
    VendOrder,
    VendReceipt,
    WindowCount,
)
from engine.timeutil import iso

Connection = sqlite3.Connection
ENTRY_COLUMNS = (
    "id, user_id, action, delta, balance_after, request_id, ip, user_agent, at, reason,"
    " http_request_id"
)
_APPEND = (
    f"INSERT INTO ledger ({ENTRY_COLUMNS.removeprefix('id, ')})"
    f" VALUES ({','.join('?' * ENTRY_COLUMNS.count(','))})"
)
_ACCOUNT = "SELECT balance, window_start, window_count FROM accounts WHERE user_id = ?"
_SET_WINDOW = "UPDATE accounts SET window_start = ?, window_count = ? WHERE user_id = ?"
_vend_receipt = msgspec.json.Decoder(VendReceipt)
_grant_receipt = msgspec.json.Decoder(GrantReceipt)
_encode = msgspec.json.encode


def one(cursor: sqlite3.Cursor) -> Any:
    """The one row of a statement, stepped to its end: a statement left half-read keeps its
    connection on an old snapshot, and its next write would fail with SQLITE_BUSY_SNAPSHOT
    once another process has written."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def entry(row: tuple[object, ...]) -> AuditEntry:
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
    # No RETURNING: every column but the id is known here, and a RETURNING row costs a vend
    # as much as the insert itself.  `_APPEND` names ENTRY_COLUMNS after the id, in order.
    values = (
        user_id,
        action,
        delta,
        balance_after,
        request_id,
        context.ip,
        context.user_agent,
        at,
        reason,
        context.http_request_id,
    )
    cursor = conn.execute(_APPEND, values)
    return AuditEntry(cursor.lastrowid or 0, *values)


# -- rate windows ------------------------------------------------------------------------
# A user's window lives in their account row, which a vend reads and writes anyway: in a
# table of its own it cost every vend one more b-tree update and one more page per commit,
# about a ninth of a spend.  Subjects without an account (an IP, a user never granted credits)
# count in the `windows` table, and a new account adopts its subject's window from there, so
# no count is lost on the way.
Window = tuple[int, int]  # (start, count), as in the account row


def _window_start(window_seconds: int, now: float) -> int:
    return int(now - now % window_seconds)


def _counted(window: Window, window_seconds: int, now: float) -> Window:
    """`window` with one more request counted at `now`; a new window if it has rolled over."""
    start = _window_start(window_seconds, now)
    return (start, window[1] + 1) if window[0] == start else (start, 1)


def count(conn: Connection, subject: str, window_seconds: int, now: float) -> WindowCount:
    # Read, then write, as `spend` explains.
    row = one(conn.execute(_ACCOUNT, (subject,)))
    if row is not None:
        start, counted = _counted((row[1], row[2]), window_seconds, now)
        conn.execute(_SET_WINDOW, (start, counted, subject))
        return WindowCount(counted, start + window_seconds)
    return _count_without_account(conn, subject, window_seconds, now)


def _count_without_account(
    conn: Connection, subject: str, window_seconds: int, now: float
) -> WindowCount:
    """Count in the `windows` table, for a subject known to have no account row."""
    start = _window_start(window_seconds, now)
    key = f"rl:{subject}@{start}"
    row = one(conn.execute("SELECT count FROM windows WHERE key = ?", (key,)))
    if row is None:
        counted = 1
        conn.execute(
            "INSERT INTO windows (key, count, expires_at) VALUES (?, 1, ?)",
            (key, start + window_seconds),
        )
    else:
        counted = int(row[0]) + 1
        conn.execute("UPDATE windows SET count = ? WHERE key = ?", (counted, key))
    return WindowCount(counted, start + window_seconds)


def _adopt_window(conn: Connection, user_id: str) -> None:
    """Move `user_id`'s latest window from the `windows` table into their new account row."""
    prefix = f"rl:{user_id}@"
    rows = conn.execute(
        # Keys end in the window's start, all digits; ':' sorts just after '9'.
        "SELECT key, count FROM windows WHERE key > ? AND key < ?",
        (prefix, prefix + ":"),
    ).fetchall()
    starts = [
        (int(key[len(prefix) :]), count) for key, count in rows if key[len(prefix) :].isdigit()
    ]
    if starts:
        conn.execute(_SET_WINDOW, (*max(starts), user_id))


def stored_response(conn: Connection, scope: str, key: str, now: float) -> StoredResponse | None:
    row = one(
        conn.execute(
            "SELECT fingerprint, status_code, body FROM responses"
            " WHERE scope = ? AND key = ? AND expires_at > ?",
            (scope, key, now),
        )
    )
    return StoredResponse(row[0], int(row[1]), bytes(row[2])) if row else None


def remember(
    conn: Connection, scope: str, key: str, response: StoredResponse, ttl: float, now: float
) -> StoredResponse:
    """Store a response unless a live one holds the key; return whichever is stored."""
    stored = stored_response(conn, scope, key, now)
    if stored is not None:
        return stored
    store_response(
        conn,
        IdempotencyKey(scope, key, response.fingerprint, now + ttl),
        response.status_code,
        response.body,
    )
    return response


def store_response(conn: Connection, key: IdempotencyKey, status: int, body: bytes) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO responses (scope, key, fingerprint, status_code, body, expires_at)"
        " VALUES (?,?,?,?,?,?)",
        (key.scope, key.key, key.fingerprint, status, body, key.expires_at),
    )


def _claim_response(conn: Connection, key: IdempotencyKey, body: bytes, now: float) -> bool:
    """Store `body` as the key's 200 unless a live response holds the key; True if stored.

    One statement where a lookup and an insert would be two: the insert is the lookup.
    """
    claimed = conn.execute(
        "INSERT INTO responses (scope, key, fingerprint, status_code, body, expires_at)"
        " VALUES (?,?,?,200,?,?) ON CONFLICT (scope, key) DO UPDATE SET"
        " fingerprint = excluded.fingerprint, status_code = excluded.status_code,"
        " body = excluded.body, expires_at = excluded.expires_at"
        " WHERE responses.expires_at <= ?",
        (key.scope, key.key, key.fingerprint, body, key.expires_at, now),
    )
    return claimed.rowcount == 1


def spend(conn: Connection, order: VendOrder) -> SpendOutcome:
    """Count the window, then answer from the key's stored response, else charge or refuse.

    Reads, then writes: the caller's transaction holds the write lock, so nothing comes
    between.  Each of `UPDATE ... RETURNING` and an upsert `RETURNING` would be one statement,
    but SQLite collects RETURNING rows in a temporary b-tree it builds and drops on every
    execution, which costs more than the separate read.
    """
    row = one(conn.execute(_ACCOUNT, (order.user_id,)))
    balance = int(row[0]) if row else 0
    rate = order.rate
    # The window to write back with the account; the row's own when this vend counts elsewhere.
    window: Window = (row[1], row[2]) if row else (0, 0)
    counted = None
    if rate is not None:
        if rate.subject != order.user_id:
            counted = count(conn, rate.subject, rate.window_seconds, order.now)
        elif row is None:  # the account's absence is known already: no second look for it
            counted = _count_without_account(conn, rate.subject, rate.window_seconds, order.now)
        else:
            window = _counted(window, rate.window_seconds, order.now)
            counted = WindowCount(window[1], window[0] + rate.window_seconds)
    outcome = _charge_or_refuse(conn, order, balance, window, counted, row is not None)
    if outcome.status != "charged" and row is not None and window != (row[1], row[2]):
        conn.execute(_SET_WINDOW, (*window, order.user_id))
    return outcome


def _charge_or_refuse(
    conn: Connection,
    order: VendOrder,
    balance: int,
    window: Window,
    counted: WindowCount | None,
    funded: bool = True,
) -> SpendOutcome:
    """The vend's outcome once its request is counted; a charge writes `window` too.

    Refusals are kept bounded (see `docs/hardening.md`): past the rate limit only the first
    refusal of each window gets an entry (the window's count says how many followed), and
    refusals of users without an account (no credits, ever) are counted in the minute's tally,
    only the minute's first `UNFUNDED_REFUSALS_KEPT_PER_MINUTE` with entries of their own (one
    client minting fresh user ids wrote 2.1M rows in 5 minutes).
    """
    at = iso(order.now)
    if order.rate is not None and counted is not None and counted.count > order.rate.limit:
        if counted.count > order.rate.limit + 1:
            return SpendOutcome("rate_limited", balance, window=counted)
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
        return SpendOutcome("rate_limited", balance, window=counted)
    receipt = None
    if balance > 0:
        receipt = VendReceipt(
            request_id=order.request_id,
            jti=order.jti,
            issued_at=order.issued_at,
            expires_at=order.expires_at,
            balance_after=balance - 1,
            client_request_id=order.client_request_id,
            at=at,
        )
    key = order.idempotency
    if key is not None:
        # A charge stores its receipt up front (rolled back with it if anything fails); a
        # refusal stores nothing, so it only looks.
        claimed = receipt is not None and _claim_response(conn, key, _encode(receipt), order.now)
        if not claimed:
            stored = stored_response(conn, key.scope, key.key, order.now)
            if stored is not None:
                if stored.fingerprint != key.fingerprint:
                    return SpendOutcome("key_conflict", balance)
                replayed = _vend_receipt.decode(stored.body)
                return SpendOutcome("replayed", replayed.balance_after, replayed, counted)
    if (
        receipt is None
        and not funded
        and not tally_refusal(conn, "insufficient_credits", order.now)
    ):
        return SpendOutcome("insufficient", balance, window=counted)
    if receipt is None:
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
        return SpendOutcome("insufficient", balance, window=counted)
    charged = conn.execute(
        "UPDATE accounts SET balance = balance - 1, updated_at = ?, window_start = ?,"
        " window_count = ? WHERE user_id = ? AND balance > 0",
        (at, *window, order.user_id),
    )
    if charged.rowcount != 1:
        raise RuntimeError("spend ran outside its write transaction")
    _append(conn, order.user_id, Action.VEND, -1, balance - 1, order.request_id, order.context, at)
    return SpendOutcome("charged", balance - 1, receipt, counted)


def tally_refusal(conn: Connection, reason: str, now: float) -> bool:
    """Count one refusal of a user without an account in the minute's tally; True while the
    minute has kept fewer than `UNFUNDED_REFUSALS_KEPT_PER_MINUTE` entries of its own."""
    key = (int(now // 60), reason)
    conn.execute(
        "INSERT INTO refusal_tallies (minute, reason, count) VALUES (?, ?, 1)"
        " ON CONFLICT (minute, reason) DO UPDATE SET count = count + 1",
        key,
    )
    counted = one(
        conn.execute("SELECT count FROM refusal_tallies WHERE minute = ? AND reason = ?", key)
    )
    return int(counted[0]) <= UNFUNDED_REFUSALS_KEPT_PER_MINUTE


def refusal_tally(conn: Connection, minute: int) -> dict[str, int]:
    rows = conn.execute(
        "SELECT reason, count FROM refusal_tallies WHERE minute = ?", (minute,)
    ).fetchall()
    return {reason: int(count) for reason, count in rows}


def record_refusal(conn: Connection, order: RefusalOrder) -> AuditEntry | None:
    row = one(conn.execute(_ACCOUNT, (order.user_id,)))
    if row is None and not tally_refusal(conn, order.reason, order.now):
        return None
    balance = int(row[0]) if row else 0
    return _append(
        conn,
        order.user_id,
        Action.VEND_REFUSED,
        0,
        balance,
        order.request_id,
        order.context,
        iso(order.now),
        order.reason,
    )


def grant(conn: Connection, order: GrantOrder) -> GrantOutcome:
    at = iso(order.now)
    key = order.idempotency
    if key is not None:
        stored = stored_response(conn, key.scope, key.key, order.now)
        if stored is not None:
            if stored.fingerprint != key.fingerprint:
                return GrantOutcome("key_conflict")
            return GrantOutcome("replayed", _grant_receipt.decode(stored.body))
    opens_account = one(conn.execute(_ACCOUNT, (order.user_id,))) is None
    (balance,) = one(
        conn.execute(
            "INSERT INTO accounts (user_id, balance, updated_at) VALUES (?,?,?)"
            " ON CONFLICT (user_id) DO UPDATE SET balance = balance + excluded.balance,"
            " updated_at = excluded.updated_at RETURNING balance",
            (order.user_id, order.amount, at),
        )
    )
    if opens_account:
        _adopt_window(conn, order.user_id)
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
        store_response(conn, key, 200, _encode(receipt))
    return GrantOutcome("granted", receipt)


def refund(conn: Connection, order: RefundOrder) -> RefundOutcome:
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
    (balance,) = one(
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
