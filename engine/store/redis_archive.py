"""History leaves Redis's RAM: audit entries older than `AUDIT_HOT_SECONDS` move to an
append-only SQLite archive file (`AUDIT_ARCHIVE_PATH`), every `ARCHIVE_INTERVAL_SECONDS`.

Archived entries leave the user's Redis list altogether: the archiver trims them off its head
(LTRIM) and adds their number to `trimmed` in the user's balance hash, in one script, and the
scripts that write the ledger give an entry the id `trimmed + its position` (`redis_scripts`).
So RAM per user holds one counter for its whole archived history, however long, and readers
(`audit`, `read_ledger`) take ids up to `trimmed` from the archive by (user, id).

Crash-safe and idempotent: a batch is first committed to the archive with
`synchronous=FULL` (the commit returns after fsync), and only then trimmed off in Redis, so a
crash between the two leaves entries in both places, and the next run archives them again with
`INSERT OR IGNORE`.  The trim names the `trimmed` it saw and does nothing if it has moved, so
two archivers at once (one per worker) archive the same immutable entries and trim them once.

Stores of earlier engines left each archived entry in its list as an empty string (a
tombstone) with no `trimmed`: readers take a tombstone's entry from the archive too, and the
archiver's first pass trims the tombstones off like entries it archived (so they migrate by
themselves, with no step at start-up).

The archive is one file: several machines sharing one Redis must share its path too (or run
the archiver on one of them, leaving it unset elsewhere, which also leaves reads there unable
to see archived entries).  Unset, nothing is archived.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from engine.timeutil import iso

ARCHIVE_BATCH_ENTRIES = 500
_SCHEMA = """
CREATE TABLE IF NOT EXISTS archived (
    user_id TEXT NOT NULL,
    id      INTEGER NOT NULL,
    entry   BLOB NOT NULL,   -- the entry exactly as Redis stored it
    PRIMARY KEY (user_id, id)
) WITHOUT ROWID;
"""

# An archived entry as JSON with its id (entries of earlier engines carry it already).
_WITH_ID = (
    "CASE WHEN substr(entry, 1, 6) = X'7B226964223A' THEN entry"
    " ELSE CAST('{\"id\":' || id || ',' || CAST(substr(entry, 2) AS TEXT) AS BLOB) END"
)

# A vend's `vend:<requestId>` field and its token's `tok:<jti>` record are what make a refund
# at-most-once and a refunded or used token worthless; they stay in RAM until the vend is this
# old *and* archived, which is longer than any token lives (15 min) and than a job is kept
# (`engine.domain.transcription.JOB_RETENTION_SECONDS`), whose failure refunds its vend.  A
# refund of an older vend is then refused `vend_archived` (410): with no record left nothing
# could stop it being refunded twice.  So RAM per user no longer grows with past vends.
VEND_RECORD_SECONDS = 7 * 24 * 3600


class _At(msgspec.Struct):
    at: str


class _Entry(msgspec.Struct, rename="camel"):
    at: str
    action: str = ""
    request_id: str = ""


_at = msgspec.json.Decoder(_At)
_entry = msgspec.json.Decoder(_Entry)


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    path: Path
    hot_seconds: float = 7 * 24 * 3600
    interval_seconds: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ArchiveSettings | None:
        env = os.environ if env is None else env
        path = env.get("AUDIT_ARCHIVE_PATH", "").strip()
        if not path:
            return None
        return cls(
            Path(path),
            float(env.get("AUDIT_HOT_SECONDS", "").strip() or 7 * 24 * 3600),
            float(env.get("ARCHIVE_INTERVAL_SECONDS", "").strip() or 60),
        )


class Archive:
    """The archive file.  Every call blocks: the store runs them on a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The wait first: two archivers opening the file at once would otherwise find it
            # locked while the other one switches it to WAL.
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def store(self, user_id: str, entries: list[tuple[int, bytes]]) -> None:
        """Commit (and fsync) entries; any already there are left as they are."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR IGNORE INTO archived (user_id, id, entry) VALUES (?,?,?)",
                    [(user_id, entry_id, raw) for entry_id, raw in entries],
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def count(self) -> int:
        with self._lock:
            row = self._connection().execute("SELECT count(*) FROM archived").fetchone()
        return int(row[0])

    def entries(self, user_id: str, ids: list[int]) -> dict[int, bytes]:
        if not ids:
            return {}
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT id, entry FROM archived WHERE user_id = ? AND id BETWEEN ? AND ?",
                    (user_id, min(ids), max(ids)),
                )
                .fetchall()
            )
        return {int(entry_id): bytes(raw) for entry_id, raw in rows}

    def entries_of(self, wanted: Mapping[str, list[int]]) -> dict[str, dict[int, bytes]]:
        """`entries` of many users at once (a batch of `read_ledger`)."""
        return {user_id: self.entries(user_id, ids) for user_id, ids in wanted.items() if ids}

    def heads(self, upto: Mapping[str, int]) -> dict[str, list[bytes]]:
        """Each user's archived entries with ids 1..`upto[user]`, in id order, each with its
        id put in by SQLite (`_WITH_ID`), in one query: `read_ledger` reads the archive's
        b-tree in key order, a batch of users at a time, and decodes a user's entries with one
        call.  All ids are there if a user's list is `upto[user]` long (ids are unique)."""
        wanted = [user_id for user_id, last in upto.items() if last > 0]
        found: dict[str, list[bytes]] = {user_id: [] for user_id in wanted}
        if not wanted:
            return found
        marks = ",".join("?" * len(wanted))
        with self._lock:
            rows = self._connection().execute(
                f"SELECT user_id, id, {_WITH_ID} FROM archived WHERE user_id IN ({marks})"
                " ORDER BY user_id, id",
                wanted,
            )
            for user_id, entry_id, raw in rows:
                if entry_id <= upto[user_id]:
                    found[user_id].append(raw)
        return found

    def page(self, user_id: str, after_id: int, last_id: int) -> list[tuple[int, bytes]]:
        """One user's archived entries with ids after_id+1..last_id, in id order."""
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT id, entry FROM archived WHERE user_id = ? AND id > ? AND id <= ?"
                    " ORDER BY id",
                    (user_id, after_id, last_id),
                )
                .fetchall()
            )
        return [(int(entry_id), bytes(raw)) for entry_id, raw in rows]

    def has_vend(self, user_id: str, request_id: str) -> bool:
        """Whether an archived entry of `user_id` is the vend `request_id` (a scan of that
        user's archived entries: refunds are rare, and the archive has no index by id)."""
        member = msgspec.json.encode(request_id)
        with self._lock:
            rows = self._connection().execute(
                "SELECT entry FROM archived WHERE user_id = ? AND instr(entry, ?) > 0",
                (user_id, b'"requestId":' + member),
            )
            return any(_entry.decode(raw).action == "vend" for (raw,) in rows)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def old_prefix(items: list[bytes], cutoff: str) -> int:
    """How many of `items` (a user's entries in order, so in time order) are older than
    `cutoff`, counting the tombstones of earlier engines (archived already) too."""
    for index, raw in enumerate(items):
        if raw and _at.decode(raw).at >= cutoff:
            return index
    return len(items)


def cutoff(now: float, hot_seconds: float) -> str:
    return iso(now - hot_seconds)


async def cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def vends_before(entries: list[bytes | None], cutoff: str) -> tuple[int, list[str]]:
    """Of a user's archived entries in order (None where one is missing), how many come before
    the first at or after `cutoff`, and the requestIds of the vends among those."""
    vends: list[str] = []
    for index, raw in enumerate(entries):
        if raw is None:
            continue
        entry = _entry.decode(raw)
        if entry.at >= cutoff:
            return index, vends
        if entry.action == "vend":
            vends.append(entry.request_id)
    return len(entries), vends
