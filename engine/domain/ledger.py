"""`ledger verify`: prove the credit invariants from the ledger alone.

For every user: the stored balance equals the sum of the ledger's deltas (grants − spends +
refunds), no running balance ever dips below zero, each entry's `balanceAfter` is the running
sum at that point, and every refund names an earlier vend of the same user, at most once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from engine.store.records import Action, AuditEntry, LedgerSnapshot

_MOVES = {Action.VEND: -1, Action.REFUND: 1}


@dataclass(slots=True)
class LedgerReport:
    users: int = 0
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_entry(entry: AuditEntry, running: int, problems: list[str]) -> None:
    expected = _MOVES.get(entry.action)  # type: ignore[call-overload]
    if expected is not None and entry.delta != expected:
        problems.append(f"entry {entry.id}: {entry.action} moved {entry.delta}, not {expected}")
    if entry.action == Action.GRANT and entry.delta <= 0:
        problems.append(f"entry {entry.id}: grant of {entry.delta}")
    if entry.action in (Action.VEND_REFUSED, Action.VEND_RATE_LIMITED) and entry.delta != 0:
        problems.append(f"entry {entry.id}: refusal moved {entry.delta}")
    if running < 0:
        problems.append(f"entry {entry.id}: balance of {entry.user_id} went to {running}")
    if entry.balance_after != running:
        problems.append(
            f"entry {entry.id}: balanceAfter {entry.balance_after} but the running sum is {running}"
        )


def verify(snapshot: LedgerSnapshot) -> LedgerReport:
    report = LedgerReport(entries=len(snapshot.entries))
    running: dict[str, int] = defaultdict(int)
    vends: set[tuple[str, str]] = set()
    refunds: set[tuple[str, str]] = set()
    for entry in snapshot.entries:
        running[entry.user_id] += entry.delta
        _check_entry(entry, running[entry.user_id], report.problems)
        ref = (entry.user_id, entry.request_id)
        if entry.action == Action.VEND:
            vends.add(ref)
        elif entry.action == Action.REFUND:
            if ref not in vends:
                report.problems.append(f"entry {entry.id}: refund of unknown vend {ref[1]}")
            if ref in refunds:
                report.problems.append(f"entry {entry.id}: second refund of vend {ref[1]}")
            refunds.add(ref)
    users = set(running) | set(snapshot.balances)
    report.users = len(users)
    for user in sorted(users):
        stored, summed = snapshot.balances.get(user, 0), running.get(user, 0)
        if stored != summed:
            report.problems.append(f"user {user}: balance {stored} but ledger sums to {summed}")
        if stored < 0:
            report.problems.append(f"user {user}: negative balance {stored}")
    return report
