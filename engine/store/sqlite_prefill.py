"""`ledger prefill` on SQLite, at bulk speed: the rows the store's operations would write for a
year of traffic, generated in Python and inserted with `executemany`, a large transaction at
a time, with the same statements' shapes (`sqlite_ops`, `sqlite_jobs`): ledger entries, account
rows, the idempotency records still alive at the end (the last day's; the older ones a running
engine would have purged), a `used` token row for every vend whose token bought its job, and
the jobs still inside their retention.  Through the operations themselves (`SQLiteBulk`) the
same history is ~30x slower: a vend is eight statements, here it is one row or three.

The workload is `ledger_prefill._Workload`'s, decision for decision (same shares); only the
writing differs.  Nothing else may write to the file meanwhile.
"""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from engine.store import sqlite_ops as ops
from engine.store.records import Context, VendReceipt, vend_request_id
from engine.timeutil import iso

ROWS_PER_COMMIT = 200_000
# Token rows and the ledger's user index take inserts all over their b-trees.
BULK_CACHE_KIB = 256 * 1024
_COLUMNS = ops.ENTRY_COLUMNS.removeprefix("id, ")
_LEDGER = f"INSERT INTO ledger ({_COLUMNS}) VALUES ({','.join('?' * (_COLUMNS.count(',') + 1))})"
_ACCOUNT = (
    "INSERT INTO accounts (user_id, balance, updated_at) VALUES (?,?,?)"
    " ON CONFLICT (user_id) DO UPDATE SET balance = excluded.balance,"
    " updated_at = excluded.updated_at"
)
_RESPONSE = (
    "INSERT OR REPLACE INTO responses (scope, key, fingerprint, status_code, body, expires_at)"
    " VALUES (?,?,?,?,?,?)"
)
_USED_JTI = (
    "INSERT INTO vend_tokens (jti, user_id, state, job_id, hold_until) VALUES (?,?,'used',?,?)"
)
_JOB = (
    "INSERT INTO jobs (job_id, user_id, jti, vend_request_id, state, upstream_id, body,"
    " created_at, updated_at, expires_at) VALUES (?,?,?,?,'accepted',?,?,?,?,?)"
)
_encode = msgspec.json.encode


class PrefillRefused(Exception):
    """The store cannot take this prefill as asked; nothing was written."""


@dataclass(frozen=True, slots=True)
class Shape:
    """The workload's knobs, as `ledger_prefill` sets them."""

    year_seconds: float
    idempotency_ttl: float
    token_ttl: int
    job_retention: float
    transcribed_share: float
    vend_fingerprint: str
    contexts: list[Context]


@dataclass(slots=True)
class _User:
    user_id: str
    balance: int = 0
    granted: bool = False
    vends: list[tuple[str, bool]] = field(default_factory=list)  # (requestId, token used)
    keys: list[tuple[str, float]] = field(default_factory=list)  # (key, record expires at)


class _Rows:
    def __init__(self) -> None:
        self.ledger: list[tuple[object, ...]] = []
        self.responses: list[tuple[object, ...]] = []
        self.tokens: list[tuple[object, ...]] = []
        self.jobs: list[tuple[object, ...]] = []
        self.accounts: dict[str, tuple[str, int, str]] = {}

    def write(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_LEDGER, self.ledger)
            conn.executemany(_ACCOUNT, self.accounts.values())
            conn.executemany(_RESPONSE, self.responses)
            conn.executemany(_USED_JTI, self.tokens)
            conn.executemany(_JOB, self.jobs)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        # Every commit: a WAL of many commits holds each page many times over, and lookups
        # through a large WAL index slowed the fill to a crawl (2 GB of WAL at 3M entries).
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.__init__()  # type: ignore[misc]


def prefill_rows(
    conn: sqlite3.Connection, entries: int, users: int, seed: int, finished: float, shape: Shape
) -> tuple[int, int, Counter[str]]:
    """Write at least `entries` ledger entries; returns (entries, users, statuses)."""
    prefix = f"prefill-{seed}-"
    # Rows carry absolute balances: on top of the same seed's users they would break the sums.
    if conn.execute(
        "SELECT 1 FROM accounts WHERE user_id >= ? AND user_id < ? LIMIT 1",
        (prefix, prefix[:-1] + "."),
    ).fetchone():
        raise PrefillRefused(f"this store already holds users of seed {seed}: pass another --seed")
    conn.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
    # A prefill that crashes is started again on a new file: no fsync per commit.  The store's
    # checkpointer runs on the event loop this blocks, so `_Rows.write` checkpoints.
    conn.execute("PRAGMA synchronous=OFF")
    rng = random.Random(seed)
    bits = rng.getrandbits  # ids as random as `os.urandom`'s, without a system call each
    people = [_User(f"{prefix}{n:07d}") for n in range(users)]
    started = finished - shape.year_seconds
    statuses: Counter[str] = Counter()
    rows = _Rows()
    written = serial = 0
    while written < entries:
        now = started + shape.year_seconds * written / entries
        at = iso(now)
        user, roll = people[rng.randrange(users)], rng.random()
        serial += 1
        context = shape.contexts[serial % len(shape.contexts)]
        ip, agent, uid = context.ip, context.user_agent, user.user_id
        hid = context.http_request_id
        request_id = f"req_{bits(128):032x}"
        if not user.granted or roll < 0.05:
            user.granted = True
            amount = rng.choice((5, 10, 20, 30))
            user.balance += amount
            rows.ledger.append(
                (uid, "grant", amount, user.balance, request_id, ip, agent, at, "purchase", hid)
            )
            status = "granted"
        elif roll < 0.07 and user.vends:
            vend, used = user.vends.pop(rng.randrange(len(user.vends)))
            if used:
                status = "token_used"
            else:
                user.balance += 1
                rows.ledger.append(
                    (uid, "refund", 1, user.balance, vend, ip, agent, at, "upstream_failed", hid)
                )
                status = "refunded"
        elif roll < 0.09:
            if now + shape.idempotency_ttl > finished:
                scope = f"admin|credits-add|{uid}"
                expires = now + shape.idempotency_ttl
                rows.responses.append((scope, request_id, "fp", 200, b'{"ok":true}', expires))
            status = "remembered"
        else:
            replay = roll < 0.12 and bool(user.keys)
            key, key_expires = rng.choice(user.keys) if replay else (f"app-{serial}", 0.0)
            transcribed = rng.random() < shape.transcribed_share
            if replay and key_expires > now:  # its record still answers: nothing is written
                statuses["replayed"] += 1
                continue
            # A new key, or a retried one whose record expired (the vend charges afresh).
            kept = [k for k in user.keys if k[0] != key][-3:]
            user.keys = [*kept, (key, now + shape.idempotency_ttl)]
            jti = f"{bits(128):032x}"  # the engine's form (`token_of_vend` expects it)
            vend_id = vend_request_id(jti)
            if user.balance <= 0:
                rows.ledger.append(
                    (uid, "vend_refused", 0, 0, vend_id, ip, agent, at, "insufficient_credits", hid)
                )
                status = "insufficient"
            else:
                user.balance -= 1
                rows.ledger.append((uid, "vend", -1, user.balance, vend_id, ip, agent, at, "", hid))
                if now + shape.idempotency_ttl > finished:
                    receipt = VendReceipt(
                        request_id=vend_id,
                        jti=jti,
                        issued_at=int(now),
                        expires_at=int(now) + shape.token_ttl,
                        balance_after=user.balance,
                        client_request_id=key,
                        at=at,
                    )
                    rows.responses.append(
                        (
                            f"user:{uid}|vend-token",
                            key,
                            shape.vend_fingerprint,
                            200,
                            _encode(receipt),
                            now + shape.idempotency_ttl,
                        )
                    )
                user.vends = [*user.vends[-7:], (vend_id, transcribed)]
                if transcribed:
                    job_id = f"job_{bits(64):016x}"
                    rows.tokens.append((jti, uid, job_id, now + 660))
                    if now + shape.job_retention > finished:
                        body = b'{"status":"completed","progress":100}'
                        expires = now + shape.job_retention
                        rows.jobs.append(
                            (job_id, uid, jti, vend_id, "up-" + job_id, body, now, now, expires)
                        )
                status = "charged"
        statuses[status] += 1
        if status != "token_used" and status != "remembered":
            written += 1
        if status in ("granted", "charged", "refunded"):  # the account row changes
            rows.accounts[uid] = (uid, user.balance, at)
        if len(rows.ledger) >= ROWS_PER_COMMIT:
            rows.write(conn)
    rows.write(conn)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA synchronous=NORMAL")
    return written, sum(1 for u in people if u.granted), statuses
