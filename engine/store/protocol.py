"""The one interface every storage backend implements.

Each method is a *domain operation* and is atomic inside the backend (one SQLite
`BEGIN IMMEDIATE` transaction, one Redis Lua script): no caller ever reads a value, decides in
Python and writes it back.  That is what makes the invariants hold with many workers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

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
)


class StoreUnavailable(Exception):
    """The backend cannot be reached; nothing was written.  Rendered as 503."""


class Store(Protocol):
    backend: str
    # Why a store that answers cannot serve ("" while it can): Redis refusing writes (OOM,
    # MISCONF), a corrupt SQLite file.  Set by the operation that met it; `/health` reports it.
    degraded: str

    async def open(self) -> None:
        """Create schema or load scripts; called once before serving."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the backend answers right now."""

    # -- credits -------------------------------------------------------------------------
    async def spend(self, order: VendOrder) -> SpendOutcome:
        """One vend attempt in one atomic step: count it against the rate window, then spend
        one credit with its audit entry and idempotency record.

        Past the rate limit it records a `vend_rate_limited` entry for the window's first
        refusal only; a replayed key returns the original receipt and charges nothing; a key
        reused with a different fingerprint is a key_conflict; a zero balance records one
        `vend_refused` entry, or, for a user without an account, counts in the refusal tally.
        """

    async def grant(self, order: GrantOrder) -> GrantOutcome: ...

    async def record_refusal(self, order: RefusalOrder) -> AuditEntry | None:
        """Append one `vend_refused` entry (delta 0, the user's balance) for a vend refused
        before its spend; balance read and entry written in one atomic step.  A user without
        an account is counted in the minute's refusal tally instead (None)."""

    async def refusal_tally(self, minute: int) -> dict[str, int]:
        """Refusals of users without an account in one minute (epoch // 60), by reason."""

    async def refund(self, order: RefundOrder) -> RefundOutcome:
        """Give back the credit of one vend, at most once; never for a vend whose token bought a
        job or is buying one (`token_used`, `token_in_use`)."""

    async def balance(self, user_id: str) -> BalanceView: ...

    async def audit(self, user_id: str, limit: int, after_id: int) -> list[AuditEntry]:
        """Entries of one user, oldest first, with ids greater than `after_id`."""

    def read_ledger(self, chunk_size: int = 1000) -> AsyncIterator[LedgerChunk]:
        """Every user's balance and entries, streamed for `ledger verify` in bounded memory:
        one user's entries at a time, in id order, as consecutive chunks of at most
        `chunk_size` entries.  Each user's balance is read at the same point as their entries
        (SQLite: the whole stream is one read transaction)."""

    async def ledger_size(self) -> int | None:
        """How many entries the ledger holds, if the backend knows cheaply (progress bars)."""

    # -- request bookkeeping -------------------------------------------------------------
    async def hit_window(self, subject: str, window_seconds: int, now: float) -> WindowCount:
        """Count one request in the fixed window containing `now`."""

    async def remember(
        self, scope: str, key: str, response: StoredResponse, ttl_seconds: float, now: float
    ) -> StoredResponse:
        """Store a response unless one is already there; return whichever is stored."""

    async def recall(self, scope: str, key: str, now: float) -> StoredResponse | None: ...

    async def cache_get(self, key: str, now: float) -> bytes | None: ...

    async def cache_set(self, key: str, value: bytes, ttl_seconds: float, now: float) -> None: ...

    async def purge_expired(self, now: float) -> int:
        """Drop expired keys, windows, cache entries and claims earlier engines left; never
        ledger entries."""

    # -- the job lifecycle (one vended token = one job) ---------------------------------
    async def consume_token(self, order: ConsumeOrder) -> str:
        """Move a vended token from unused to in flight and create its job (`submitting`), in
        one step.  Returns consumed, token_used, token_in_use or token_refunded; of any number
        of concurrent calls for one token, one is consumed.  Excludes `refund` of its vend."""

    async def accept_job(
        self, user_id: str, job_id: str, upstream_id: str, body: bytes, now: float
    ) -> JobRecord | None:
        """Upstream took the job: record its upstream id and body and mark the token used."""

    async def release_token(self, user_id: str, job_id: str) -> bool:
        """Upstream refused or failed: delete the submitting job and return its token to
        unused, once (True).  A job already known to upstream (a webhook came) keeps it."""

    async def job(self, user_id: str, job_id: str) -> JobRecord | None:
        """The job, if it exists and belongs to `user_id`."""

    async def job_owner(self, job_id: str) -> str | None:
        """Who owns the job (for the webhook, which names the job and not the user)."""

    async def observe_job(self, observation: JobObservation) -> JobRecord | None:
        """Record what was learnt of a job (see `JobObservation`) and return it as stored;
        the first terminal state wins, and its refund happens in the same step, so concurrent
        observers refund once."""


@dataclass(slots=True)
class LedgerScreen:
    """What a store's own screen of its ledger found: the whole ledger's totals, and every
    user who might break an invariant (a superset: `ledger verify` re-checks them in full)."""

    users: int = 0
    entries: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    suspects: set[str] = field(default_factory=set)


@runtime_checkable
class LedgerScreener(Protocol):
    """A store that can screen its whole ledger itself (SQLite: in SQL, see
    `sqlite_screen`), so that `ledger verify` decodes only the suspects' entries."""

    async def screen_ledger(self, progress: Callable[[int], None] | None) -> LedgerScreen:
        """Screen every entry and account in one snapshot (per query); `progress(n)` as
        about n more entries are screened, adding up to the ledger's size."""

    def read_users(self, user_ids: Iterable[str]) -> AsyncIterator[LedgerChunk]:
        """Those users' histories as `read_ledger` yields them, in user order, each user
        whole in one snapshot."""
