"""The SQL of the job lifecycle: consume a vended token, accept or release its job, record
what upstream says of it.  Each function runs inside the caller's one write transaction
(`SQLiteStore`), like `sqlite_ops`."""

from __future__ import annotations

import sqlite3
from typing import Any

from engine.store import sqlite_ops as ops
from engine.store.records import (
    FAILED_JOB_REFUND_REASON,
    ConsumeOrder,
    Context,
    JobObservation,
    JobRecord,
    RefundOrder,
    RefundOutcome,
)

Connection = sqlite3.Connection
TERMINAL = ("completed", "failed")
_JOB_COLUMNS = (
    "job_id, user_id, jti, vend_request_id, state, upstream_id, body, change, created_at,"
    " updated_at, lost_since, credits_refunded"
)


def _record(row: tuple[Any, ...] | None) -> JobRecord | None:
    if row is None:
        return None
    job_id, user_id, jti, vend, state, upstream, body, change, created, updated, lost, refunded = (
        row
    )
    return JobRecord(
        job_id,
        user_id,
        jti,
        vend,
        state,
        upstream,
        bytes(body),
        change,
        created,
        updated,
        lost,
        refunded,
    )


def job(conn: Connection, user_id: str, job_id: str) -> JobRecord | None:
    return _record(
        ops.one(
            conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ? AND user_id = ?",
                (job_id, user_id),
            )
        )
    )


def job_owner(conn: Connection, job_id: str) -> str | None:
    row = ops.one(conn.execute("SELECT user_id FROM jobs WHERE job_id = ?", (job_id,)))
    return str(row[0]) if row else None


def _refunded(conn: Connection, user_id: str, vend_request_id: str) -> bool:
    # The partial unique index `ledger_one_refund_per_vend` answers this.
    return bool(
        ops.one(
            conn.execute(
                "SELECT 1 FROM ledger WHERE user_id = ? AND request_id = ? AND action = 'refund'",
                (user_id, vend_request_id),
            )
        )
    )


def consume(conn: Connection, order: ConsumeOrder) -> str:
    if _refunded(conn, order.user_id, order.vend_request_id):
        return "token_refunded"
    held = ops.one(
        conn.execute(
            "SELECT state, hold_until, job_id FROM vend_tokens WHERE jti = ?", (order.jti,)
        )
    )
    if held is not None:
        if held[2] == order.job_id:  # this very order, run again (a retried batch)
            return "consumed"
        if held[0] == "used":
            return "token_used"
        if float(held[1]) > order.now:
            return "token_in_use"
    conn.execute(
        "INSERT OR REPLACE INTO vend_tokens (jti, user_id, state, job_id, hold_until)"
        " VALUES (?,?,'in_flight',?,?)",
        (order.jti, order.user_id, order.job_id, order.hold_until),
    )
    conn.execute(
        "INSERT INTO jobs (job_id, user_id, jti, vend_request_id, state, body, created_at,"
        " updated_at, expires_at) VALUES (?,?,?,?,'submitting',?,?,?,?)",
        (
            order.job_id,
            order.user_id,
            order.jti,
            order.vend_request_id,
            order.body,
            order.now,
            order.now,
            order.expires_at,
        ),
    )
    return "consumed"


def _spend_token(conn: Connection, jti: str, job_id: str) -> None:
    conn.execute(
        "UPDATE vend_tokens SET state = 'used' WHERE jti = ? AND job_id = ?", (jti, job_id)
    )


def accept(
    conn: Connection, user_id: str, job_id: str, upstream_id: str, body: bytes, now: float
) -> JobRecord | None:
    current = job(conn, user_id, job_id)
    if current is None:
        return None
    if current.state == "submitting":
        conn.execute(
            "UPDATE jobs SET state = 'accepted', upstream_id = ?, body = ?, updated_at = ?"
            " WHERE job_id = ?",
            (upstream_id, body, now, job_id),
        )
    else:  # a webhook about it came first: keep what it recorded
        conn.execute(
            "UPDATE jobs SET upstream_id = ? WHERE job_id = ? AND upstream_id = ''",
            (upstream_id, job_id),
        )
    _spend_token(conn, current.jti, job_id)
    return job(conn, user_id, job_id)


def release(conn: Connection, user_id: str, job_id: str) -> bool:
    current = job(conn, user_id, job_id)
    if current is None:
        return False
    if current.state != "submitting":  # upstream has it after all (a webhook said so)
        _spend_token(conn, current.jti, job_id)
        return False
    conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
    freed = conn.execute(
        "DELETE FROM vend_tokens WHERE jti = ? AND job_id = ? AND state = 'in_flight'",
        (current.jti, job_id),
    )
    return freed.rowcount == 1


def observe(conn: Connection, seen: JobObservation) -> JobRecord | None:
    current = job(conn, seen.user_id, seen.job_id)
    if current is None or current.state in TERMINAL:
        return current
    if seen.upstream_id and not current.upstream_id:
        conn.execute(
            "UPDATE jobs SET upstream_id = ? WHERE job_id = ?", (seen.upstream_id, seen.job_id)
        )
    status = seen.status
    if seen.lost:
        if current.lost_since == 0:
            conn.execute("UPDATE jobs SET lost_since = ? WHERE job_id = ?", (seen.now, seen.job_id))
            return job(conn, seen.user_id, seen.job_id)
        if seen.now - current.lost_since < seen.grace_seconds:
            return current
        status = "failed"
    elif current.lost_since:
        conn.execute("UPDATE jobs SET lost_since = 0 WHERE job_id = ?", (seen.job_id,))
    if status in TERMINAL:
        refunded = 0
        if status == "failed" and seen.refund:
            outcome = ops.refund(
                conn,
                RefundOrder(
                    seen.user_id,
                    current.vend_request_id,
                    FAILED_JOB_REFUND_REASON,
                    Context(),
                    seen.now,
                ),
            )
            refunded = int(outcome.status == "refunded")
        conn.execute(
            "UPDATE jobs SET state = ?, body = ?, change = ?, updated_at = ?,"
            " credits_refunded = ? WHERE job_id = ?",
            (status, seen.body, seen.change, seen.now, refunded, seen.job_id),
        )
    elif seen.change != current.change:
        conn.execute(
            "UPDATE jobs SET body = ?, change = ?, updated_at = ? WHERE job_id = ?",
            (seen.body, seen.change, seen.now, seen.job_id),
        )
    return job(conn, seen.user_id, seen.job_id)


def refund_unused(conn: Connection, order: RefundOrder, jti: str | None) -> RefundOutcome:
    """An operator's refund: refused while the vend's token is buying a job or has bought
    one, so credit is never returned for a job that ran (`jti` None: a vend from before the
    token named its vend, which no job record can name)."""
    if jti is not None:
        held = ops.one(
            conn.execute(
                "SELECT state, hold_until FROM vend_tokens WHERE jti = ? AND user_id = ?",
                (jti, order.user_id),
            )
        )
        if held is not None and (held[0] == "used" or float(held[1]) > order.now):
            return RefundOutcome("token_used" if held[0] == "used" else "token_in_use")
    return ops.refund(conn, order)
