"""`ledger prefill` on SQLite, at bulk speed: the rows the store's operations would write for a
year of traffic, generated in Python and inserted with `executemany`: ledger entries, account
rows, the idempotency records still alive at the end (the last day's; the older ones a running
engine would have purged), a `used` token row for every vend whose token bought its job, and
the jobs still inside their retention.  Through the operations themselves the same history is
~30x slower: a vend is eight statements, here it is one row or two.

What keeps it fast (12k entries/s at 10M before these, see docs/performance.md):
- as little Python per entry as the workload allows: the timestamp is formatted by SQLite
  (`strftime`), random numbers come from one generator, the account rows are written once at
  the end (each user's final balance);
- a writer thread inserts one batch while the next is generated (`sqlite3` releases the GIL
  while SQLite steps);
- rows that would land all over a b-tree are not inserted one by one: on a fresh store (no
  ledger yet) the ledger's secondary indexes are dropped and rebuilt at the end (one sort);
  token rows (keyed by a random jti) wait in a temporary table and go in sorted, at the end;
- no fsync until the end (a prefill that crashes is started again on a new file; a store
  reopened after a crash gets its indexes back from the schema, which `open` applies).

The workload is the one `engine.ledger_prefill` describes, decision for decision; only the
writing differs.  Nothing else may write to the file meanwhile.
"""

from __future__ import annotations

import queue
import random
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import msgspec

from engine.store.records import VEND_REQUEST_PREFIX, Context, VendReceipt
from engine.timeutil import iso

ROWS_PER_BATCH = 100_000
BULK_CACHE_KIB = 256 * 1024
_LEDGER = (
    "INSERT INTO ledger (user_id, action, delta, balance_after, request_id, ip, user_agent, at,"
    " reason, http_request_id) VALUES"
    " (?,?,?,?,?,?,?,strftime('%Y-%m-%dT%H:%M:%fZ',?/1000.0,'unixepoch'),?,?)"
)
_ACCOUNT = (
    "INSERT INTO accounts (user_id, balance, updated_at) VALUES (?,?,?)"
    " ON CONFLICT (user_id) DO UPDATE SET balance = excluded.balance,"
    " updated_at = excluded.updated_at"
)
_RESPONSE = (
    "INSERT OR REPLACE INTO responses (scope, key, fingerprint, status_code, body, expires_at)"
    " VALUES (?,?,?,?,?,?)"
)
_STAGE_TOKENS = (
    "CREATE TEMP TABLE IF NOT EXISTS prefill_tokens (jti TEXT, user_id TEXT, job_id TEXT,"
    " hold_until REAL)"
)
_STAGE_JTI = "INSERT INTO prefill_tokens VALUES (?,?,?,?)"
_USED_JTIS = (
    "INSERT INTO vend_tokens (jti, user_id, state, job_id, hold_until)"
    " SELECT jti, user_id, 'used', job_id, hold_until FROM prefill_tokens ORDER BY jti"
)
_JOB = (
    "INSERT INTO jobs (job_id, user_id, jti, vend_request_id, state, upstream_id, body,"
    " created_at, updated_at, expires_at) VALUES (?,?,?,?,'accepted',?,?,?,?,?)"
)
_LEDGER_INDEXES = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger'"
_encode = msgspec.json.encode
_JOB_BODY = b'{"status":"completed","progress":100}'


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
    changed: float = 0.0  # when the account row last changed (0: never granted)
    vends: list[tuple[str, bool]] = field(default_factory=list)  # (requestId, token used)
    keys: list[tuple[str, float]] = field(default_factory=list)  # (key, record expires at)


@dataclass(slots=True)
class _Rows:
    ledger: list[tuple[object, ...]] = field(default_factory=list)
    responses: list[tuple[object, ...]] = field(default_factory=list)
    tokens: list[tuple[object, ...]] = field(default_factory=list)
    jobs: list[tuple[object, ...]] = field(default_factory=list)

    def write(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_LEDGER, self.ledger)
            conn.executemany(_RESPONSE, self.responses)
            conn.executemany(_STAGE_JTI, self.tokens)
            conn.executemany(_JOB, self.jobs)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        # A WAL of many commits holds each page many times over, and lookups through a
        # large WAL index slowed the fill to a crawl (2 GB of WAL at 3M entries).
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@contextmanager
def _writer(conn: sqlite3.Connection) -> Iterator[Callable[[_Rows], None]]:
    """`put(rows)` hands a batch to a thread that writes it while the next is generated."""
    batches: queue.Queue[_Rows | None] = queue.Queue(maxsize=1)
    failed: list[BaseException] = []

    def write() -> None:
        while (rows := batches.get()) is not None:
            if not failed:
                try:
                    rows.write(conn)
                except BaseException as exc:  # re-raised on the generating thread
                    failed.append(exc)

    def put(rows: _Rows) -> None:
        if failed:
            raise failed[0]
        batches.put(rows)

    thread = threading.Thread(target=write, name="sqlite-prefill-write", daemon=True)
    thread.start()
    try:
        yield put
    finally:
        batches.put(None)
        thread.join()
    if failed:
        raise failed[0]


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
    # The store's checkpointer runs on the event loop this blocks, so `_Rows.write` does.
    conn.execute("PRAGMA synchronous=OFF")
    deferred: list[tuple[str, str]] = []
    if conn.execute("SELECT 1 FROM ledger LIMIT 1").fetchone() is None:
        deferred = [(n, s) for n, s in conn.execute(_LEDGER_INDEXES) if s is not None]
        for name, _ in deferred:
            conn.execute(f"DROP INDEX {name}")
    conn.execute(_STAGE_TOKENS)
    people = [_User(f"{prefix}{n:07d}") for n in range(users)]
    statuses: Counter[str] = Counter()
    with _writer(conn) as put:
        written = _generate(people, entries, random.Random(seed), finished, shape, statuses, put)
    conn.execute("BEGIN IMMEDIATE")
    try:
        granted = [(u.user_id, u.balance, iso(u.changed)) for u in people if u.changed]
        conn.executemany(_ACCOUNT, granted)
        conn.execute(_USED_JTIS)
        conn.execute("DROP TABLE prefill_tokens")
        for _, sql in deferred:  # one sort each, instead of a b-tree insert per entry
            conn.execute(sql)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA synchronous=NORMAL")
    return written, len(granted), statuses


def _generate(
    people: list[_User],
    entries: int,
    rng: random.Random,
    finished: float,
    shape: Shape,
    statuses: Counter[str],
    put: Callable[[_Rows], None],
) -> int:
    """The workload's decisions, as rows in batches handed to `put`; returns the entries."""
    rand, bits, users = rng.random, rng.getrandbits, len(people)
    contexts = [(c.ip, c.user_agent, c.http_request_id) for c in shape.contexts]
    span, ttl, share = shape.year_seconds, shape.idempotency_ttl, shape.transcribed_share
    started = finished - span
    kept_from = finished - ttl  # records written after this are still alive at the end
    jobs_from = finished - shape.job_retention
    rows = _Rows()
    ledger = rows.ledger
    # Token ids, 32 random hex digits each, cut from one long string: a slice costs a fifth
    # of formatting a 128-bit number.
    hexes, cut = "", 0
    written = serial = 0
    while written < entries:
        now = started + span * written / entries
        ms = int(now * 1000)  # whole milliseconds, as `iso` truncates them
        user, roll = people[int(rand() * users)], rand()
        serial += 1
        ip, agent, hid = contexts[serial % len(contexts)]
        uid = user.user_id
        if not user.changed or roll < 0.05:
            amount = (5, 10, 20, 30)[int(rand() * 4)]
            user.balance += amount
            user.changed = now
            request_id = f"req_{bits(128):032x}"
            ledger.append(
                (uid, "grant", amount, user.balance, request_id, ip, agent, ms, "purchase", hid)
            )
            status = "granted"
        elif roll < 0.07 and user.vends:
            vend, used = user.vends.pop(int(rand() * len(user.vends)))
            if used:
                statuses["token_used"] += 1
                continue
            user.balance += 1
            user.changed = now
            ledger.append(
                (uid, "refund", 1, user.balance, vend, ip, agent, ms, "upstream_failed", hid)
            )
            status = "refunded"
        elif roll < 0.09:
            if now > kept_from:
                scope = f"admin|credits-add|{uid}"
                key = f"req_{bits(128):032x}"
                rows.responses.append((scope, key, "fp", 200, b'{"ok":true}', now + ttl))
            statuses["remembered"] += 1
            continue
        else:
            keys = user.keys
            if roll < 0.12 and keys:
                key, key_expires = keys[int(rand() * len(keys))]
                transcribed = rand() < share
                if key_expires > now:  # its record still answers: nothing is written
                    statuses["replayed"] += 1
                    continue
                # A retried key whose record expired: the vend charges afresh.
                keys = [k for k in keys if k[0] != key]
            else:
                key, transcribed = f"app-{serial}", rand() < share
            user.keys = [*keys[-3:], (key, now + ttl)]
            if cut == len(hexes):
                hexes, cut = rng.randbytes(16 * ROWS_PER_BATCH).hex(), 0
            jti = hexes[cut : cut + 32]  # the engine's form (`token_of_vend` expects it)
            cut += 32
            vend_id = VEND_REQUEST_PREFIX + jti  # `vend_request_id`
            if user.balance <= 0:
                ledger.append(
                    (uid, "vend_refused", 0, 0, vend_id, ip, agent, ms, "insufficient_credits", hid)
                )
                status = "insufficient"
            else:
                user.balance -= 1
                user.changed = now
                ledger.append((uid, "vend", -1, user.balance, vend_id, ip, agent, ms, "", hid))
                if now > kept_from:
                    _remember_vend(rows, shape, uid, key, jti, vend_id, now, user.balance)
                vends = user.vends
                if len(vends) >= 8:
                    del vends[0]
                vends.append((vend_id, transcribed))
                if transcribed:
                    job_id = f"job_{bits(64):016x}"
                    rows.tokens.append((jti, uid, job_id, now + 660))
                    if now > jobs_from:
                        expires = now + shape.job_retention
                        rows.jobs.append(
                            (
                                job_id,
                                uid,
                                jti,
                                vend_id,
                                "up-" + job_id,
                                _JOB_BODY,
                                now,
                                now,
                                expires,
                            )
                        )
                status = "charged"
        statuses[status] += 1
        written += 1
        if len(ledger) >= ROWS_PER_BATCH:
            put(rows)
            rows = _Rows()
            ledger = rows.ledger
    put(rows)
    return written


def _remember_vend(
    rows: _Rows, shape: Shape, uid: str, key: str, jti: str, vend_id: str, now: float, after: int
) -> None:
    """The idempotency record of a vend of the last day, which a retry still replays."""
    receipt = VendReceipt(
        request_id=vend_id,
        jti=jti,
        issued_at=int(now),
        expires_at=int(now) + shape.token_ttl,
        balance_after=after,
        client_request_id=key,
        at=iso(now),
    )
    scope = f"user:{uid}|vend-token"
    expires = now + shape.idempotency_ttl
    rows.responses.append((scope, key, shape.vend_fingerprint, 200, _encode(receipt), expires))
