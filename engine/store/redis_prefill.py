"""`ledger prefill` on Redis at bulk speed: a year of history written as the keys and archive
rows that serving it would have left, not operation by operation (a script per entry runs at
~2k entries/s; 10M entries would take over an hour).

A year is mostly beyond the hot window, so with an archive (`AUDIT_ARCHIVE_PATH`) the entries
older than `AUDIT_HOT_SECONDS` go straight into the archive file (`executemany`, a large
transaction at a time) and Redis gets what the archiver would have left: each user's balance
hash (balance, `trimmed`, the `vend:` records younger than `VEND_RECORD_SECONDS`), the hot
tail of the ledger (one pipelined RPUSH per user), the records cursor, the idempotency records
and remembered responses of the last day, the token records of the last week's vends that
bought a job, and the jobs within retention.  Without an archive every entry goes to Redis.

The workload is the one `engine.ledger_prefill` describes, decision for decision like SQLite's
bulk path (`sqlite_prefill`); entries are byte for byte what `redis_scripts._APPEND` writes.
Nothing else may write to these users meanwhile.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec

from engine.store import redis_archive
from engine.store.protocol import Store
from engine.store.records import Context, VendReceipt, vend_request_id
from engine.store.redis import RedisStore, _entry_fields
from engine.store.redis_history import _user
from engine.store.redis_jobs import _job_key, token_key
from engine.store.sqlite_prefill import PrefillRefused, Shape

ARCHIVE_ROWS_PER_COMMIT = 200_000
COMMANDS_PER_PIPELINE = 5_000
# Arguments (mostly entries) in one pipeline: a write of ~15 MB, well inside the reply timeout.
ARGUMENTS_PER_PIPELINE = 50_000
_INSERT = "INSERT INTO archived (user_id, id, entry) VALUES (?,?,?)"
_encode = msgspec.json.encode
_COMPLETED = b'{"status":"completed","progress":100}'


@dataclass(slots=True)
class _User:
    user_id: str
    balance: int = 0
    granted: bool = False
    count: int = 0  # entries so far: the next one's id is count + 1
    trimmed: int = 0  # of those, in the archive
    records: int = 0  # of those, older than the records window (no vend:/tok: left)
    updated_at: str = ""
    vends: list[tuple[str, bool]] = field(default_factory=list)  # (requestId, token used)
    keys: list[tuple[str, float]] = field(default_factory=list)  # (key, record expires at)
    kept: dict[str, str] = field(default_factory=dict)  # vend:<requestId> records in RAM
    hot: list[bytes] = field(default_factory=list)  # entries for the list, not yet written


_DAYS: dict[int, str] = {}


def _iso(epoch_seconds: float) -> str:
    """`timeutil.iso`, with each day's date formatted once (`iso` caches a few seconds, and
    every prefilled entry has a second of its own)."""
    second = int(epoch_seconds)
    day, in_day = divmod(second, 86400)
    date = _DAYS.get(day)
    if date is None:
        date = _DAYS[day] = time.strftime("%Y-%m-%dT", time.gmtime(day * 86400))
    hours, rest = divmod(in_day, 3600)
    millis = int((epoch_seconds - second) * 1000)
    return f"{date}{hours:02d}:{rest // 60:02d}:{rest % 60:02d}.{millis:03d}Z"


def _entry(action: str, delta: int, after: int, reason: str, fields: bytes) -> bytes:
    return b'{"action":"%s","delta":%d,"balanceAfter":%d,"reason":%s,%s}' % (
        action.encode(),
        delta,
        after,
        _encode(reason),
        fields,
    )


class _Writer:
    """Buffers archive rows and Redis commands, and writes each in large batches."""

    def __init__(self, store: RedisStore, archive: sqlite3.Connection | None) -> None:
        self.store = store
        self.archive = archive
        self.rows: list[tuple[str, int, bytes]] = []
        self.commands: list[tuple[Any, ...]] = []
        self.arguments = 0

    async def command(self, *command: Any) -> None:
        self.commands.append(command)
        self.arguments += len(command)
        if len(self.commands) >= COMMANDS_PER_PIPELINE or self.arguments >= ARGUMENTS_PER_PIPELINE:
            await self.flush_redis()

    def row(self, user_id: str, entry_id: int, entry: bytes) -> None:
        self.rows.append((user_id, entry_id, entry))
        if len(self.rows) >= ARCHIVE_ROWS_PER_COMMIT:
            self.flush_archive()

    async def flush_redis(self) -> None:
        if not self.commands:
            return
        pipe = self.store._redis.pipeline(transaction=False)
        for command in self.commands:
            pipe.execute_command(*command)
        await pipe.execute()
        self.commands = []
        self.arguments = 0

    def flush_archive(self) -> None:
        if self.archive is None or not self.rows:
            return
        self.rows.sort()  # in the b-tree's order: each batch fills pages instead of splitting
        self.archive.execute("BEGIN")
        self.archive.executemany(_INSERT, self.rows)
        self.archive.execute("COMMIT")
        self.rows = []


def _open_archive(settings: redis_archive.ArchiveSettings) -> sqlite3.Connection:
    settings.path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(settings.path, isolation_level=None)
    # A prefill that crashes is started again on a new store: no journal and no fsync while it
    # writes; the file is synced and put back in WAL mode (the archiver's) at the end.
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    conn.executescript(redis_archive._SCHEMA)
    return conn


async def prefill(
    store: Store, entries: int, users: int, seed: int, finished: float, shape: Shape
) -> tuple[int, int, Counter[str]]:
    """Write at least `entries` ledger entries; returns (entries, users, statuses)."""
    assert isinstance(store, RedisStore)
    prefix = f"prefill-{seed}-"
    if await store._redis.exists(_user(f"{prefix}{0:07d}") + ":bal"):
        raise PrefillRefused(f"this store already holds users of seed {seed}: pass another --seed")
    settings = store._archive_settings
    hot_cutoff = records_cutoff = float("-inf")
    if settings is not None:
        hot_cutoff = finished - settings.hot_seconds
        records_cutoff = finished - max(settings.hot_seconds, redis_archive.VEND_RECORD_SECONDS)
    archive = _open_archive(settings) if settings is not None else None
    writer = _Writer(store, archive)
    try:
        written, granted, statuses = await _generate(
            writer, entries, users, seed, finished, shape, (hot_cutoff, records_cutoff)
        )
        writer.flush_archive()
        await writer.flush_redis()
        if archive is not None:
            archive.execute("PRAGMA synchronous=FULL")
            archive.execute("PRAGMA journal_mode=WAL")  # rewrites the header, synced
    finally:
        if archive is not None:
            archive.close()
    if settings is not None:
        with settings.path.open("rb+") as synced:
            os.fsync(synced.fileno())
    return written, granted, statuses


async def _generate(
    writer: _Writer,
    entries: int,
    users: int,
    seed: int,
    finished: float,
    shape: Shape,
    cutoffs: tuple[float, float],
) -> tuple[int, int, Counter[str]]:
    hot_cutoff, records_cutoff = cutoffs
    rng = random.Random(seed)
    bits = rng.getrandbits  # ids as random as `os.urandom`'s, without a system call each
    people = [_User(f"prefill-{seed}-{n:07d}") for n in range(users)]
    started = finished - shape.year_seconds
    statuses: Counter[str] = Counter()
    written = serial = 0
    pending: list[_User] = []  # users with hot entries not yet written, in order
    held = 0  # and how many entries they hold

    def append(user: _User, action: str, delta: int, reason: str, fields: bytes) -> None:
        nonlocal held
        user.count += 1
        entry = _entry(action, delta, user.balance, reason, fields)
        if now < hot_cutoff:
            writer.row(user.user_id, user.count, entry)
            user.trimmed = user.count
            if now < records_cutoff:
                user.records = user.count
        else:
            if not user.hot:
                pending.append(user)
            held += 1
            user.hot.append(entry)

    while written < entries:
        now = started + shape.year_seconds * written / entries
        at = _iso(now)
        user, roll = people[rng.randrange(users)], rng.random()
        serial += 1
        context: Context = shape.contexts[serial % len(shape.contexts)]
        uid, key_of = user.user_id, _user(user.user_id)
        request_id = f"req_{bits(128):032x}"
        if not user.granted or roll < 0.05:
            user.granted = True
            amount = rng.choice((5, 10, 20, 30))
            user.balance += amount
            append(user, "grant", amount, "purchase", _entry_fields(uid, request_id, context, at))
            status = "granted"
        elif roll < 0.07 and user.vends:
            vend, used = user.vends.pop(rng.randrange(len(user.vends)))
            if used:
                status = "token_used"
            else:
                user.balance += 1
                fields = _entry_fields(uid, vend, context, at)
                append(user, "refund", 1, "upstream_failed", fields)
                if vend in user.kept:
                    user.kept[vend] = "refunded"
                status = "refunded"
        elif roll < 0.09:
            if now + shape.idempotency_ttl > finished:
                expires = int((now + shape.idempotency_ttl) * 1000)
                name = f"resp:admin|credits-add|{uid}:{request_id}"
                await writer.command(
                    "HSET", name, "fp", "fp", "status", 200, "body", b'{"ok":true}'
                )
                await writer.command("PEXPIREAT", name, expires)
            status = "remembered"
        else:
            replay = roll < 0.12 and bool(user.keys)
            key, key_expires = rng.choice(user.keys) if replay else (f"app-{serial}", 0.0)
            transcribed = rng.random() < shape.transcribed_share
            if replay and key_expires > now:  # its record still answers: nothing is written
                statuses["replayed"] += 1
                continue
            kept = [k for k in user.keys if k[0] != key][-3:]
            user.keys = [*kept, (key, now + shape.idempotency_ttl)]
            jti = f"{bits(128):032x}"
            vend_id = vend_request_id(jti)
            fields = _entry_fields(uid, vend_id, context, at)
            if user.balance <= 0:
                append(user, "vend_refused", 0, "insufficient_credits", fields)
                status = "insufficient"
            else:
                user.balance -= 1
                append(user, "vend", -1, "", fields)
                if now >= records_cutoff:
                    user.kept[vend_id] = "vended"
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
                    name = f"{key_of}:idem:user:{uid}|vend-token:{key}"
                    value = shape.vend_fingerprint.encode() + b"|" + _encode(receipt)
                    expires = int((now + shape.idempotency_ttl) * 1000)
                    await writer.command("SET", name, value, "PXAT", expires)
                user.vends = [*user.vends[-7:], (vend_id, transcribed)]
                if transcribed:
                    job_id = f"job_{bits(64):016x}"
                    if now >= records_cutoff:  # older token records left with their vends
                        await writer.command("SET", token_key(uid, jti), "used|" + job_id)
                    if now + shape.job_retention > finished:
                        await _job(writer, uid, jti, vend_id, job_id, now, shape.job_retention)
                status = "charged"
        statuses[status] += 1
        if held >= ARGUMENTS_PER_PIPELINE:  # the hot tail, in order, a user at a time
            for each in pending:
                await writer.command("RPUSH", _user(each.user_id) + ":ledger", *each.hot)
                each.hot = []
            pending, held = [], 0
        if status != "token_used" and status != "remembered":
            written += 1
        if status in ("granted", "charged", "refunded"):
            user.updated_at = at
    for user in people:
        if not user.granted:
            continue
        key_of = _user(user.user_id)
        if user.hot:
            await writer.command("RPUSH", key_of + ":ledger", *user.hot)
        state = [x for rid, value in user.kept.items() for x in ("vend:" + rid, value)]
        trimmed = ["trimmed", user.trimmed] if user.trimmed else []
        await writer.command(
            "HSET", key_of + ":bal", "balance", user.balance, "updated_at", user.updated_at,
            *trimmed, *state,
        )  # fmt: skip
        if user.records:
            await writer.command("SET", key_of + ":records", user.records)
    return written, sum(1 for u in people if u.granted), statuses


async def _job(
    writer: _Writer, uid: str, jti: str, vend_id: str, job_id: str, now: float, retention: float
) -> None:
    """A job whose transcription completed, as `consume_token` then `accept_job` leave it."""
    name, expires = _job_key(uid, job_id), int((now + retention) * 1000)
    await writer.command(
        "HSET", name, "user", uid, "jti", jti, "rid", vend_id, "state", "accepted",
        "upstream", "up-" + job_id, "body", _COMPLETED, "change", "", "created", repr(now),
        "updated", repr(now), "lost", "0", "refunded", "0",
    )  # fmt: skip
    await writer.command("PEXPIREAT", name, expires)
    await writer.command("SET", f"jobref:{job_id}", uid, "PXAT", expires)
