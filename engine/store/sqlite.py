"""SQLite backend: the embedded default, one file, no set-up.

Writes go through `GroupCommitter`: the write operations of one event-loop turn share one
`BEGIN IMMEDIATE` transaction, and nobody is answered before the COMMIT; writers in other
processes sharing the file queue on an advisory flock beside it.  WAL with
`synchronous=NORMAL` means a committed transaction survives a crash of the engine process
(not a power cut of the machine: for that, `synchronous=FULL`).  Reads run inline; WAL
readers do not wait for writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TypeVar, cast

from engine.store import sqlite_jobs as jobs
from engine.store import sqlite_ledger, sqlite_prefill, sqlite_screen
from engine.store import sqlite_ops as ops
from engine.store.protocol import LedgerScreen, StoreUnavailable
from engine.store.records import (
    AuditEntry,
    BalanceView,
    ConsumeOrder,
    GrantOrder,
    GrantOutcome,
    JobObservation,
    JobRecord,
    LedgerChunk,
    RefundOrder,
    RefundOutcome,
    RefusalOrder,
    SpendOutcome,
    StoredResponse,
    VendOrder,
    WindowCount,
    token_of_vend,
)
from engine.store.sqlite_batch import GroupCommitter

T = TypeVar("T")
CHECKPOINT_INTERVAL_SECONDS = 1.0
CHECKPOINT_PASSES = 3
# The last pass pauses the writers only over a backlog this small (~4 MB of 4 KiB pages, a few
# ms to copy): a purge or a burst leaves tens of MB behind, and pausing the writers over that
# held every write for up to half a second.  A bigger backlog waits for the next checkpoint.
PAUSED_PASS_MAX_FRAMES = 1000
# The WAL file is cut back to this after a checkpoint that reset it (`journal_size_limit`), and
# truncated outright when it has grown past it (`checkpoint`).
WAL_LIMIT_BYTES = 64 * 1024 * 1024
WAL_TRUNCATE_WAIT_MS = 20
STREAM_CACHE_KIB = 64 * 1024
PURGE_PAUSE_SECONDS = 0.005
# Between batches the purge rests at least this many times as long as the last batch held the
# writers' lock: it then writes the WAL at most a fifth of the time, slowly enough for the
# checkpoints to copy it beside the writers.  At full speed the WAL reached its limit, and each
# truncation paused every writer for ~50 ms (docs/performance.md).
PURGE_REST_FACTOR = 4
Connection = sqlite3.Connection
_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_PING = "SELECT 1 FROM sqlite_master LIMIT 1"


# Columns added since the first release, which `CREATE TABLE IF NOT EXISTS` cannot add.
_ADDED_COLUMNS = {
    "accounts": (
        "window_start INTEGER NOT NULL DEFAULT 0",
        "window_count INTEGER NOT NULL DEFAULT 0",
    ),
    "ledger": ("http_request_id TEXT NOT NULL DEFAULT ''",),
}


def _add_missing_columns(conn: Connection) -> None:
    """Bring a file made by an older engine up to the schema; in one write transaction, since
    every worker runs it at start-up."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, columns in _ADDED_COLUMNS.items():
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SQLiteStore:
    """The `Store` protocol on one SQLite file."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.degraded = ""  # why the file cannot serve (corrupt), "" while it can
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._connections_lock = threading.Lock()
        self._inline: Connection | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        # A purge batch and a checkpoint never run at once (`purge_expired`).
        self._upkeep_lock = f"{path}.upkeep-lock"
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
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
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

    def _check_corrupt(self, exc: sqlite3.DatabaseError) -> None:
        """A corrupt file (or one that is not a database) is a 503, never a 500, and marks the
        store degraded for `/health`: corruption does not heal, so it stays until restart."""
        if exc.sqlite_errorcode & 0xFF in _CORRUPT:
            self.degraded = f"sqlite file unusable: {exc}"
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    @contextlib.contextmanager
    def _corruption_checked(self) -> Iterator[None]:
        """Around a write: a corrupt file's error becomes `StoreUnavailable`."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            self._check_corrupt(exc)
            raise

    async def _write(self, operation: Callable[[Connection], T]) -> T:
        with self._corruption_checked():
            return cast(T, await self._batch.submit(operation))

    async def _read(self, query: Callable[[Connection], T]) -> T:
        """Inline; a WAL reader waits only in rare recovery cases, and then on a thread."""
        try:
            return query(self._inline_connection())
        except sqlite3.OperationalError as exc:
            self._check_corrupt(exc)
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise StoreUnavailable(f"sqlite: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            self._check_corrupt(exc)
            raise

        def in_thread() -> T:
            try:
                return query(self._thread_connection())
            except sqlite3.OperationalError as exc:
                self._check_corrupt(exc)
                raise StoreUnavailable(f"sqlite: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                self._check_corrupt(exc)
                raise

        return await asyncio.get_running_loop().run_in_executor(self._readers, in_thread)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        schema = resources.files("engine.store").joinpath("sqlite_schema.sql").read_text()
        loop = asyncio.get_running_loop()

        def create() -> None:
            conn = self._thread_connection()
            conn.executescript(schema)
            _add_missing_columns(conn)

        await loop.run_in_executor(self._writer, create)
        self._checkpointer = loop.create_task(self._checkpoint_forever())

    async def _checkpoint_forever(self) -> None:
        """Every `CHECKPOINT_INTERVAL_SECONDS`, and sooner when the WAL has reached half its
        limit: a burst of writes (a prefill, a storm of vends) grew it by more than the limit
        in one interval."""
        loop = asyncio.get_running_loop()
        last, size_after = loop.time(), self._wal_bytes()
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_SECONDS / 4)
            due = loop.time() - last >= CHECKPOINT_INTERVAL_SECONDS
            # Growth since the last checkpoint, not the file's size: a WAL that restarted keeps
            # its size, and judged by it every quarter second was "half full" forever.
            if not due and self._wal_bytes() - size_after < WAL_LIMIT_BYTES // 2:
                continue
            last = loop.time()
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(self._readers, self._checkpoint_apart)
            size_after = self._wal_bytes()

    def _checkpoint_apart(self) -> None:
        with sqlite_ledger.upkeep(self._upkeep_lock, wait=True):
            self.checkpoint()

    def checkpoint(self) -> None:
        """Fold the WAL back into the database so that the next writer starts it afresh.

        The WAL restarts only after a checkpoint that copied *every* frame, and under steady
        writes a pass beside the writers rarely does: new frames land while it copies.  The WAL
        then grew by ~30 MB a second of vends, and each append to a growing file made the
        kernel allocate and zero new blocks, a visible share of a vend's cost.  So passes beside
        the writers (PASSIVE never blocks them) copy the bulk, each only what arrived during
        the last; if frames keep arriving, one last pass runs with the writers paused on their
        flock, but only over a backlog of at most `PAUSED_PASS_MAX_FRAMES` (or when the WAL is
        past its limit).  Blocking: call it from a thread (the store does, every
        `CHECKPOINT_INTERVAL_SECONDS`).
        """
        conn = self._thread_connection()
        last, backlog = -1, 0
        for _ in range(CHECKPOINT_PASSES):
            # A pass reports the WAL as it stood when the pass began; only a pass that finds
            # no frame added since the last one knows that it has copied everything.
            _, frames, copied = ops.one(conn.execute("PRAGMA wal_checkpoint(PASSIVE)"))
            if frames == copied == last:
                break
            last, backlog = frames, frames - copied
        else:
            if backlog <= PAUSED_PASS_MAX_FRAMES or self._wal_bytes() > WAL_LIMIT_BYTES:
                with self._batch.writers_paused():
                    ops.one(conn.execute("PRAGMA wal_checkpoint(PASSIVE)"))
        if self._wal_bytes() > WAL_LIMIT_BYTES:
            self._truncate_wal(conn)

    def _truncate_wal(self, conn: Connection) -> None:
        """Cut a WAL that grew past `WAL_LIMIT_BYTES` (a burst between two checkpoints, or a
        long reader that kept it from restarting) back to zero.  Writers are paused while it
        runs, so it waits for readers only, and for 20 ms at most: a reader still there
        (a `ledger verify` of a live store) makes it give up until the next checkpoint rather
        than hold the writers."""
        with self._batch.writers_paused():
            conn.execute(f"PRAGMA busy_timeout={WAL_TRUNCATE_WAIT_MS}")
            try:
                ops.one(conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
            finally:
                conn.execute("PRAGMA busy_timeout=30000")

    def _wal_bytes(self) -> int:
        try:
            return Path(f"{self.path}-wal").stat().st_size
        except OSError:
            return 0

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
            # The schema, not a constant: `SELECT 1` reads no page, so it passed on a file
            # that was no longer a database.
            await self._read(lambda conn: ops.one(conn.execute(_PING)))
        except StoreUnavailable:
            return False
        return True

    # -- credits -------------------------------------------------------------------------
    async def spend(self, order: VendOrder) -> SpendOutcome:
        return await self._write(lambda conn: ops.spend(conn, order))

    async def grant(self, order: GrantOrder) -> GrantOutcome:
        return await self._write(lambda conn: ops.grant(conn, order))

    async def refund(self, order: RefundOrder) -> RefundOutcome:
        jti = token_of_vend(order.vend_request_id)
        return await self._write(lambda conn: jobs.refund_unused(conn, order, jti))

    async def record_refusal(self, order: RefusalOrder) -> AuditEntry | None:
        return await self._write(lambda conn: ops.record_refusal(conn, order))

    async def refusal_tally(self, minute: int) -> dict[str, int]:
        return await self._read(lambda conn: ops.refusal_tally(conn, minute))

    async def balance(self, user_id: str) -> BalanceView:
        def read(conn: Connection) -> BalanceView:
            row = ops.one(
                conn.execute(
                    "SELECT balance, updated_at FROM accounts WHERE user_id = ?", (user_id,)
                )
            )
            return BalanceView(int(row[0]), row[1]) if row else BalanceView(0, None)

        return await self._read(read)

    async def audit(self, user_id: str, limit: int, after_id: int) -> list[AuditEntry]:
        def read(conn: Connection) -> list[AuditEntry]:
            rows = conn.execute(
                f"SELECT {ops.ENTRY_COLUMNS} FROM ledger WHERE user_id = ? AND id > ?"
                " ORDER BY id LIMIT ?",
                (user_id, after_id, limit),
            )
            return [ops.entry(row) for row in rows]

        return await self._read(read)

    def read_ledger(self, chunk_size: int = 1000) -> AsyncIterator[LedgerChunk]:
        return self._streamed(lambda conn: sqlite_ledger.ledger_chunks(conn, chunk_size))

    async def _streamed(
        self, chunks_of: Callable[[Connection], Generator[list[LedgerChunk], None, None]]
    ) -> AsyncIterator[LedgerChunk]:
        """The chunks `chunks_of` reads, on a connection and thread of their own, so a verify
        of a large ledger neither holds the loop nor a reader that requests wait for."""
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1, thread_name_prefix="sqlite-ledger") as thread:
            conn = await loop.run_in_executor(thread, self._stream_connection)
            chunks = chunks_of(conn)
            try:
                # One batch read ahead: the thread steps SQLite (GIL released) while the
                # caller checks the batch before.
                ahead = loop.run_in_executor(thread, next, chunks, None)
                while batch := await ahead:
                    ahead = loop.run_in_executor(thread, next, chunks, None)
                    for chunk in batch:
                        yield chunk
            finally:
                await loop.run_in_executor(thread, chunks.close)
                await loop.run_in_executor(thread, conn.close)

    def prefill(
        self, entries: int, users: int, seed: int, finished: float, shape: sqlite_prefill.Shape
    ) -> tuple[int, int, Counter[str]]:
        """`ledger prefill`'s bulk path (`sqlite_prefill`), blocking; `open` first, and
        nothing else may write meanwhile."""
        return sqlite_prefill.prefill_rows(
            self._thread_connection(), entries, users, seed, finished, shape
        )

    async def screen_ledger(self, progress: Callable[[int], None] | None) -> LedgerScreen:
        """`ledger verify`'s screen in SQL (`sqlite_screen`), on connections and threads of
        its own."""
        return await asyncio.to_thread(
            sqlite_screen.screen_ledger, self._stream_connection, progress
        )

    def read_users(
        self, user_ids: Iterable[str], chunk_size: int = 1000
    ) -> AsyncIterator[LedgerChunk]:
        """The suspects' histories (`sqlite_screen.user_chunks`), streamed as `read_ledger`."""
        users = sorted(user_ids)
        return self._streamed(lambda conn: sqlite_screen.user_chunks(conn, users, chunk_size))

    def _stream_connection(self) -> Connection:
        """Not `_connect`: setting the journal mode would write to a file that verify only
        reads (and the caller has checked that it exists)."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=30000")
        # The stream reads the table in user order, i.e. all over the file: a 64 MiB page
        # cache (of a bounded RSS) made it about 1.7x faster than the default 2 MiB.
        conn.execute(f"PRAGMA cache_size=-{STREAM_CACHE_KIB}")
        return conn

    async def ledger_size(self) -> int | None:
        conn = self._stream_connection()  # a b-tree's last key: no need for a thread
        try:
            return sqlite_ledger.ledger_size(conn)
        finally:
            conn.close()

    # -- request bookkeeping -------------------------------------------------------------
    async def hit_window(self, subject: str, window_seconds: int, now: float) -> WindowCount:
        return await self._write(lambda conn: ops.count(conn, subject, window_seconds, now))

    async def remember(
        self, scope: str, key: str, response: StoredResponse, ttl_seconds: float, now: float
    ) -> StoredResponse:
        return await self._write(
            lambda conn: ops.remember(conn, scope, key, response, ttl_seconds, now)
        )

    async def recall(self, scope: str, key: str, now: float) -> StoredResponse | None:
        return await self._read(lambda conn: ops.stored_response(conn, scope, key, now))

    async def cache_get(self, key: str, now: float) -> bytes | None:
        def read(conn: Connection) -> bytes | None:
            row = ops.one(
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
        """In batches by the `*_by_expiry` indexes, each a transaction of its own on the writer
        thread (`GroupCommitter.on_thread`), never on the loop, its row limit paced to hold the
        writers' lock ~5 ms (`sqlite_ledger.next_purge_limit`), with a pause between batches
        for the writes that queued.  A request waits on the purge for one batch at most (its
        wall time, which a loaded disk or CPU can stretch: docs/performance.md): one purge of
        everything held the loop for 411 ms at 3M rows, and batches of a fixed 256 rows run
        inline on the loop for up to 40 ms.

        No batch runs while a checkpoint does, in any process (`sqlite_ledger.upkeep`): the
        purge writes the WAL far faster than vends, so beside it the checkpoint's passes never
        caught up, and its last pass, with the writers paused, copied what the purge had
        written meanwhile: pauses of up to 155 ms at 3M rows, against 12 ms with vends alone."""
        purged, limit = 0, sqlite_ledger.PURGE_FIRST_ROWS
        for table in sqlite_ledger.PURGED_TABLES:
            while True:
                batch = functools.partial(
                    sqlite_ledger.purge_batch, table=table, now=now, limit=limit
                )
                count, held = await self._purge_one(batch)
                purged += count
                if count < limit:
                    break
                limit = sqlite_ledger.next_purge_limit(limit, held)
                await asyncio.sleep(max(PURGE_PAUSE_SECONDS, PURGE_REST_FACTOR * held))
        return purged

    async def _purge_one(self, batch: Callable[[Connection], int]) -> tuple[int, float]:
        """One batch (rows deleted, seconds it held the writers' lock) once no checkpoint is
        running; polled, so that the writer thread never waits for one."""
        while True:
            with sqlite_ledger.upkeep(self._upkeep_lock, wait=False) as ours:
                if ours:
                    with self._corruption_checked():
                        return cast(tuple[int, float], await self._batch.on_thread(batch))
            await asyncio.sleep(PURGE_PAUSE_SECONDS)

    # -- the job lifecycle (SQL in sqlite_jobs) ------------------------------------------
    async def consume_token(self, order: ConsumeOrder) -> str:
        return await self._write(lambda conn: jobs.consume(conn, order))

    async def accept_job(
        self, user_id: str, job_id: str, upstream_id: str, body: bytes, now: float
    ) -> JobRecord | None:
        return await self._write(
            lambda conn: jobs.accept(conn, user_id, job_id, upstream_id, body, now)
        )

    async def release_token(self, user_id: str, job_id: str) -> bool:
        return await self._write(lambda conn: jobs.release(conn, user_id, job_id))

    async def job(self, user_id: str, job_id: str) -> JobRecord | None:
        return await self._read(lambda conn: jobs.job(conn, user_id, job_id))

    async def job_owner(self, job_id: str) -> str | None:
        return await self._read(lambda conn: jobs.job_owner(conn, job_id))

    async def observe_job(self, observation: JobObservation) -> JobRecord | None:
        return await self._write(lambda conn: jobs.observe(conn, observation))
