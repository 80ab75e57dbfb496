"""`ledger verify`: prove the credit invariants from the ledger alone, in one streaming pass.

For every user: the stored balance equals the sum of the ledger's deltas (grants − spends +
refunds), no running balance ever dips below zero, each entry's `balanceAfter` is the running
sum at that point, every refund names exactly one earlier vend of the same user (and is its
only refund), and no vend is charged twice (a vend's `requestId` is what its idempotency
record replays, so one key charged twice shows as one `requestId` twice).

The store streams one user at a time (`Store.read_ledger`), so the checker holds one user's
running sum and vend ids, never the ledger: memory is bounded by the longest single history.
SQLite first screens the whole ledger in SQL (`LedgerScreener`, `sqlite_screen`) and streams
only the users the screen names, so Python decodes the entries of those users alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.store.protocol import LedgerScreener, Store
from engine.store.records import Action, AuditEntry, LedgerChunk

_MOVES = {Action.VEND: -1, Action.REFUND: 1}
_REFUSALS = (Action.VEND_REFUSED, Action.VEND_RATE_LIMITED)
# Violations kept for printing; past this many only their count grows (memory stays bounded
# even on a ledger that is broken everywhere).
MAX_KEPT_VIOLATIONS = 10_000


@dataclass(slots=True, frozen=True)
class Violation:
    """One broken invariant, with the entries that show it."""

    kind: str
    user_id: str
    entry_ids: tuple[int, ...]
    detail: str

    def __str__(self) -> str:
        ids = ",".join(map(str, self.entry_ids)) or "-"
        return f"{self.kind} user={self.user_id} entries={ids}: {self.detail}"


@dataclass(slots=True)
class LedgerReport:
    users: int = 0
    entries: int = 0
    violation_count: int = 0
    violations: list[Violation] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    @property
    def problems(self) -> list[str]:
        return [str(v) for v in self.violations]

    def flag(self, kind: str, user_id: str, entry_ids: tuple[int, ...], detail: str) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_KEPT_VIOLATIONS:
            self.violations.append(Violation(kind, user_id, entry_ids, detail))

    def summary(self) -> dict[str, object]:
        """The `--json` document."""
        return {
            "ok": self.ok,
            "users": self.users,
            "entries": self.entries,
            "actions": dict(sorted(self.actions.items())),
            "violationCount": self.violation_count,
            "violations": [
                {
                    "kind": v.kind,
                    "userId": v.user_id,
                    "entryIds": list(v.entry_ids),
                    "detail": v.detail,
                }
                for v in self.violations
            ],
        }


class _UserCheck:
    """The state of one user's history while it streams past."""

    __slots__ = ("balance", "refunded", "report", "running", "user_id", "vends")

    def __init__(self, user_id: str, balance: int | None, report: LedgerReport) -> None:
        self.user_id = user_id
        self.balance = balance
        self.report = report
        self.running = 0
        self.vends: dict[str, int] = {}  # requestId -> entry id
        self.refunded: dict[str, int] = {}  # requestId -> refund entry id

    def feed(self, entries: list[AuditEntry]) -> None:
        flag, user, actions = self.report.flag, self.user_id, self.report.actions
        for entry in entries:
            action, delta = entry.action, entry.delta
            actions[action] += 1
            # SQLite keeps text in an INTEGER column: a damaged file, named, never a crash.
            if type(delta) is not int or type(entry.balance_after) is not int:
                flag("not_an_integer", user, (entry.id,), "delta or balanceAfter is not a number")
                continue
            self.running += delta
            expected = _MOVES.get(action)  # type: ignore[call-overload]
            if expected is not None and delta != expected:
                flag("bad_delta", user, (entry.id,), f"{action} moved {delta}, not {expected}")
            elif action == Action.GRANT and delta <= 0:
                flag("bad_delta", user, (entry.id,), f"grant of {delta}")
            elif action in _REFUSALS and delta != 0:
                flag("bad_delta", user, (entry.id,), f"refusal moved {delta}")
            if self.running < 0:
                flag("negative_balance", user, (entry.id,), f"balance went to {self.running}")
            if entry.balance_after != self.running:
                flag(
                    "balance_after_mismatch",
                    user,
                    (entry.id,),
                    f"balanceAfter {entry.balance_after} but the running sum is {self.running}",
                )
            if action == Action.VEND:
                first = self.vends.setdefault(entry.request_id, entry.id)
                if first != entry.id:
                    flag(
                        "charged_twice",
                        user,
                        (first, entry.id),
                        f"vend {entry.request_id} charged twice",
                    )
            elif action == Action.REFUND:
                self._refund(entry)
        self.report.entries += len(entries)

    def _refund(self, entry: AuditEntry) -> None:
        vend = self.vends.get(entry.request_id)
        if vend is None:
            self.report.flag(
                "refund_unlinked",
                self.user_id,
                (entry.id,),
                f"refund of {entry.request_id}, which is no earlier vend of this user",
            )
        earlier = self.refunded.setdefault(entry.request_id, entry.id)
        if earlier != entry.id:
            ids = (earlier, entry.id) if vend is None else (vend, earlier, entry.id)
            self.report.flag(
                "refund_duplicate", self.user_id, ids, f"vend {entry.request_id} refunded twice"
            )

    def finish(self) -> None:
        stored = 0 if self.balance is None else self.balance
        if stored != self.running:
            self.report.flag(
                "balance_mismatch",
                self.user_id,
                (),
                f"stored balance {stored} but the ledger sums to {self.running}",
            )
        if stored < 0:
            self.report.flag("negative_balance", self.user_id, (), f"stored balance {stored}")


class LedgerChecker:
    """Feed it `LedgerChunk`s in the order `Store.read_ledger` yields them; then `finish()`."""

    def __init__(self) -> None:
        self.report = LedgerReport()
        self._user: _UserCheck | None = None

    def feed(self, chunk: LedgerChunk) -> None:
        if self._user is None or self._user.user_id != chunk.user_id:
            self._close_user()
            self._user = _UserCheck(chunk.user_id, chunk.balance, self.report)
            self.report.users += 1
        self._user.feed(chunk.entries)

    def _close_user(self) -> None:
        if self._user is not None:
            self._user.finish()
            self._user = None

    def finish(self) -> LedgerReport:
        self._close_user()
        return self.report


async def verify(store: Store, progress: Callable[[int], None] | None = None) -> LedgerReport:
    """Check every entry of `store`; `progress(n)` as n more entries are checked.

    A store that screens its own ledger (SQLite, in SQL) names the users who might break a
    rule, and only those are read and checked here, by the same rules as every user of a
    streamed store: the screen is a superset, so the report is the same as a full pass's.
    The others stream user by user."""
    checker = LedgerChecker()
    if isinstance(store, LedgerScreener):
        screen = await store.screen_ledger(progress)
        async for chunk in store.read_users(screen.suspects):
            checker.feed(chunk)
        report = checker.finish()
        report.users, report.entries = screen.users, screen.entries
        report.actions = Counter(screen.actions)
        return report
    async for chunk in store.read_ledger():
        checker.feed(chunk)
        if progress is not None and chunk.entries:
            progress(len(chunk.entries))
    return checker.finish()
