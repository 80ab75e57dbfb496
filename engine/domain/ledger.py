"""`ledger verify`: prove the credit invariants from the ledger alone, in one streaming pass.

For every user: the stored balance equals the sum of the ledger's deltas (grants − spends +
refunds), no running balance ever dips below zero, each entry's `balanceAfter` is the running
sum at that point, every refund names exactly one earlier vend of the same user (and is its
only refund), and no vend is charged twice (a vend's `requestId` is what its idempotency
record replays, so one key charged twice shows as one `requestId` twice).

The store streams one user at a time (`Store.read_ledger`), so the checker holds one user's
running sum and vend ids, never the ledger: memory is bounded by the longest single history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from engine.store.protocol import IdOrderScanner, Store
from engine.store.records import Action, AuditEntry, LedgerChunk, LedgerRow

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


# -- the same rules over the ledger in id order (SQLite: one sequential pass) --------------
# A vend's requestId is 128 random bits, so a duplicate is all but impossible unless the engine
# charged one key twice; a bitmap of their hashes (one bit each) finds every possible duplicate
# in fixed memory, and only the few colliding ids (plus refunds, ~2 % of entries) are then
# checked exactly.  2**28 bits = 32 MiB: at 10M vends about 4 % of them collide by chance.
_BITMAP_BITS = 1 << 28
_MASK = _BITMAP_BITS - 1


class IdOrderCheck:
    """The rules of `_UserCheck`, for entries fed in id order with users interleaved.

    What it holds: each user's running sum (a dict entry, the user id and a small int, ~100
    bytes per user), a fixed 32 MiB bitmap of vend ids, and the *suspect* request ids (every
    refund's, and every vend's whose bit was already set).  The per-request rules — charged
    twice, refund of no vend, refund twice — are then decided exactly by `resolve` over every
    entry of those ids (the store reads them in one more pass), so memory is bounded by the
    number of users plus the number of refunds, never by the length of any history.
    """

    def __init__(self, progress: Callable[[int], None] | None = None) -> None:
        self.report = LedgerReport()
        self.progress = progress
        self.running: dict[str, int] = {}
        self.suspects: set[str] = set()
        self._bits = bytearray(_BITMAP_BITS // 8)
        self._counts: dict[str, int] = dict.fromkeys(
            (
                Action.VEND,
                Action.VEND_REFUSED,
                Action.VEND_RATE_LIMITED,
                Action.GRANT,
                Action.REFUND,
            ),
            0,
        )

    def feed(self, rows: list[LedgerRow]) -> None:
        """One batch of rows, in id order; the tight loop of the whole check."""
        running, get, counts, bits, suspects = (
            self.running,
            self.running.get,
            self._counts,
            self._bits,
            self.suspects,
        )
        flag = self.report.flag
        for entry_id, user, action, delta, after, request_id in rows:
            total = get(user, 0) + delta
            running[user] = total
            if action == "vend":
                counts["vend"] += 1
                if delta != -1:
                    flag("bad_delta", user, (entry_id,), f"vend moved {delta}, not -1")
                h = hash(request_id) & _MASK
                byte, bit = h >> 3, 1 << (h & 7)
                if bits[byte] & bit:
                    suspects.add(request_id)
                else:
                    bits[byte] |= bit
            elif action == "refund":
                counts["refund"] += 1
                if delta != 1:
                    flag("bad_delta", user, (entry_id,), f"refund moved {delta}, not 1")
                suspects.add(request_id)
            elif action == "grant":
                counts["grant"] += 1
                if delta <= 0:
                    flag("bad_delta", user, (entry_id,), f"grant of {delta}")
            else:
                counts[action] = counts.get(action, 0) + 1
                if delta != 0:
                    flag("bad_delta", user, (entry_id,), f"refusal moved {delta}")
            if total < 0:
                flag("negative_balance", user, (entry_id,), f"balance went to {total}")
            if after != total:
                flag(
                    "balance_after_mismatch",
                    user,
                    (entry_id,),
                    f"balanceAfter {after} but the running sum is {total}",
                )
        self.report.entries += len(rows)
        if self.progress is not None:
            self.progress(len(rows))

    def take_suspects(self) -> Iterator[str]:
        """The request ids to decide exactly, given up as they are read."""
        while self.suspects:
            yield self.suspects.pop()

    def resolve(self, rows: Iterable[tuple[int, str, str, str]]) -> None:
        """Every vend and refund entry (id, user_id, action, request_id) whose request id is a
        suspect, in id order: the per-request rules, exactly as `_UserCheck` applies them."""
        vends: dict[tuple[str, str], int] = {}
        refunded: dict[tuple[str, str], int] = {}
        flag = self.report.flag
        for entry_id, user, action, request_id in rows:
            key = (user, request_id)
            if action == "vend":
                first = vends.setdefault(key, entry_id)
                if first != entry_id:
                    flag(
                        "charged_twice", user, (first, entry_id), f"vend {request_id} charged twice"
                    )
                continue
            vend = vends.get(key)
            if vend is None:
                flag(
                    "refund_unlinked",
                    user,
                    (entry_id,),
                    f"refund of {request_id}, which is no earlier vend of this user",
                )
            earlier = refunded.setdefault(key, entry_id)
            if earlier != entry_id:
                ids = (earlier, entry_id) if vend is None else (vend, earlier, entry_id)
                flag("refund_duplicate", user, ids, f"vend {request_id} refunded twice")

    def finish(self, accounts: Iterable[tuple[str, int]]) -> None:
        """Every account (user_id, balance): each must equal its user's sum, as must 0 for a
        user with entries and no account."""
        running, flag = self.running, self.report.flag
        users = 0
        for user, balance in accounts:
            users += 1
            total = running.pop(user, 0)
            if balance != total:
                flag(
                    "balance_mismatch",
                    user,
                    (),
                    f"stored balance {balance} but the ledger sums to {total}",
                )
            if balance < 0:
                flag("negative_balance", user, (), f"stored balance {balance}")
        for user, total in running.items():
            users += 1
            if total != 0:
                flag(
                    "balance_mismatch", user, (), f"stored balance 0 but the ledger sums to {total}"
                )
        running.clear()
        self.report.users = users
        self.report.actions.update({a: n for a, n in self._counts.items() if n})


async def verify(store: Store, progress: Callable[[int], None] | None = None) -> LedgerReport:
    """Check every entry of `store` in one pass; `progress(n)` after each chunk of n entries.

    A store that can read its ledger in its own order (SQLite) gets the id-order check; the
    others stream user by user."""
    if isinstance(store, IdOrderScanner):
        check = IdOrderCheck(progress)
        await store.scan_ledger(check)
        return check.report
    checker = LedgerChecker()
    async for chunk in store.read_ledger():
        checker.feed(chunk)
        if progress is not None and chunk.entries:
            progress(len(chunk.entries))
    return checker.finish()
