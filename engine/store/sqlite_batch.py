"""Group commit for SQLite: the write operations of one event-loop turn share one transaction.

A commit is the expensive part of a small SQLite write (the WAL append and its bookkeeping), so
under load committing thirty vends at once costs barely more than committing one.  An
operation that fails is still isolated: the batch is rolled back and each operation re-runs in
a transaction of its own, so only the failing one reports an error.  No caller is answered
before the COMMIT that holds its write has succeeded, so acknowledged writes are durable
exactly as with one transaction each.

Writers of every process take an advisory `flock` beside the database before they touch
SQLite's own lock: SQLite's busy handler polls with sleeps of 1 to 100 ms (with two workers
that made a p99 of seconds).  A batch runs inline on the event loop when the flock is free
(an uncontended batch takes well under a millisecond).  When another process holds it, one
thread queues for it in the kernel and wakes the loop the moment it is granted; meanwhile
what arrives joins the waiting batch, and the loop runs the lot inline, under the lock the
thread took.  Retrying on a timer instead left the loop idle for the rest of each
millisecond, about a tenth of the machine with two workers; running the batch itself on the
thread was slower still, its Python competing with the loop for the GIL at every SQLite call.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine.store.loop_turn import Batch as LoopBatch
from engine.store.loop_turn import TurnQueue
from engine.store.protocol import StoreUnavailable

Operation = Callable[[sqlite3.Connection], Any]
Outcome = tuple[bool, Any]  # (succeeded, result or exception)
Batch = LoopBatch[Operation]


class CommitUncertain(Exception):
    """COMMIT raised.  The batch may be durable or not (a commit can fail after its WAL frames
    are written), so it is never run again: re-running it applied every operation twice.  Its
    callers get a 503; their idempotency keys make their own retries safe."""


def _commit(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise CommitUncertain(f"COMMIT failed: {exc}") from exc


def run_batch(conn: sqlite3.Connection, operations: list[Operation]) -> list[Outcome]:
    """All operations in one IMMEDIATE transaction.

    Operations fail only on a constraint or a bug, so the batch runs optimistically without
    savepoints (they would double the statements per vend); if one raises, the whole batch is
    rolled back and every operation re-runs alone in its own transaction, which isolates the
    failure to its own caller exactly as savepoints would.
    """
    if len(operations) == 1:
        return [_run_alone(conn, operations[0])]
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = [operation(conn) for operation in operations]
    except sqlite3.OperationalError:
        conn.execute("ROLLBACK")
        raise  # the connection is in trouble: abandon the whole batch
    except Exception:
        conn.execute("ROLLBACK")
        return [_run_alone(conn, operation) for operation in operations]
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    _commit(conn)
    return [(True, result) for result in results]


def _run_alone(conn: sqlite3.Connection, operation: Operation) -> Outcome:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = operation(conn)
    except sqlite3.OperationalError:
        conn.execute("ROLLBACK")
        raise
    except Exception as exc:
        conn.execute("ROLLBACK")
        return (False, exc)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    _commit(conn)
    return (True, result)


class GroupCommitter:
    def __init__(
        self,
        inline: Callable[[], sqlite3.Connection],
        threaded: Callable[[], sqlite3.Connection],
        pool: ThreadPoolExecutor,
        lock_path: str,
    ) -> None:
        self._inline = inline
        self._threaded = threaded
        self._pool = pool
        self._lock_path = lock_path
        # One descriptor per holder (the loop, the lock's waiter, the writer thread, a
        # checkpoint's pause), because flock belongs to an open file description: sharing one,
        # a holder would "hold" the lock another took.
        self._lock_fds: dict[str, int] = {}
        self._turn: TurnQueue[Operation] = TurnQueue(self._flush)
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: Batch | None = None  # operations queued behind the lock's waiter

    def _lock(self, holder: str) -> int:
        fd = self._lock_fds.get(holder)
        if fd is None:
            fd = self._lock_fds[holder] = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        return fd

    @contextlib.contextmanager
    def _holding(self, holder: str) -> Iterator[None]:
        """The writers' flock, waited for in the kernel: call from a thread."""
        fd = self._lock(holder)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def writers_paused(self) -> contextlib.AbstractContextManager[None]:
        """No process commits while this is held; their batches queue for the lock."""
        return self._holding("pause")

    def close(self) -> None:
        for fd in self._lock_fds.values():
            os.close(fd)
        self._lock_fds.clear()

    def submit(self, operation: Operation) -> asyncio.Future[Any]:
        return self._turn.submit(operation)

    async def on_thread(self, operation: Operation) -> tuple[Any, float]:
        """`operation` alone in a transaction of its own on the writer thread, never inline on
        the loop; returns its result and how long it held the writers' lock, in seconds.

        For upkeep that takes milliseconds, the expiry purge: inline, a batch held the loop
        and every request for its whole duration.  Here SQLite steps it with the GIL released
        (one statement, so no Python to compete with the loop's), the loop goes on serving
        reads, and a write that arrives meanwhile finds the flock taken and queues its waiter
        on this same single thread, right behind the operation: it waits for the rest of this
        one operation and no more, so its caller bounds the wait by keeping each one short.
        """

        def locked() -> tuple[Outcome, float]:
            with self._holding("thread"):
                started = time.perf_counter()
                (outcome,) = run_batch(self._threaded(), [operation])
                return outcome, time.perf_counter() - started

        try:
            (succeeded, value), held = await asyncio.get_running_loop().run_in_executor(
                self._pool, locked
            )
        except (sqlite3.OperationalError, CommitUncertain, OSError) as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc
        if not succeeded:
            raise value
        return value, held

    def _flush(self, batch: Batch) -> None:
        if self._waiting is not None:
            self._waiting.extend(batch)
            return
        loop_fd = self._lock("loop")
        try:
            fcntl.flock(loop_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._waiting = batch
            self._spawn(self._wait_for_lock())
            return
        except OSError as exc:
            self._fail(batch, exc)
            return
        self._run_locked(batch, loop_fd)

    async def _wait_for_lock(self) -> None:
        waiter_fd = self._lock("waiter")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, fcntl.flock, waiter_fd, fcntl.LOCK_EX)
        except Exception as exc:
            batch, self._waiting = self._waiting or [], None
            self._fail(batch, exc)
            return
        batch, self._waiting = self._waiting or [], None
        self._run_locked(batch, waiter_fd)

    def _run_locked(self, batch: Batch, fd: int) -> None:
        """Run `batch` inline while `fd` holds the flock, then let the flock go."""
        try:
            outcomes = run_batch(self._inline(), [operation for operation, _ in batch])
        except CommitUncertain as exc:
            self._fail(batch, exc)  # never re-run: it may have been applied
            return
        except sqlite3.OperationalError as exc:
            # Even under the flock another connection (a `ledger verify`, a checkpoint) can
            # hold SQLite's lock; nothing was written (the batch was rolled back, or never
            # began; a failed COMMIT is `CommitUncertain`), so a thread waits for it instead.
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                self._fail(batch, exc)
                return
            outcomes = None
        except Exception as exc:  # a callback must settle every future, whatever happened
            self._fail(batch, exc)
            return
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        if outcomes is None:
            self._spawn(self._in_thread(batch))
            return
        self._settle(batch, outcomes)

    def _spawn(self, step: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(step)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _in_thread(self, batch: Batch) -> None:
        """Nothing of the batch was written; a thread waits for both locks and runs it."""
        operations = [operation for operation, _ in batch]

        def locked() -> list[Outcome]:
            with self._holding("thread"):
                return run_batch(self._threaded(), operations)

        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(self._pool, locked)
        except Exception as exc:
            self._fail(batch, exc)
            return
        self._settle(batch, outcomes)

    @staticmethod
    def _settle(batch: Batch, outcomes: list[Outcome]) -> None:
        for (_, future), (succeeded, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if succeeded:
                future.set_result(value)
            else:
                future.set_exception(value)

    @staticmethod
    def _fail(batch: Batch, exc: Exception) -> None:
        """Locked past busy_timeout, disk full, file gone: nothing of the batch was written."""
        for _, future in batch:
            if not future.done():
                future.set_exception(StoreUnavailable(f"sqlite: {exc}"))
