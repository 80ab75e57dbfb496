"""The `vend` / `vend-observed` pair of the bench (issue 20 item 9), measured so both sides
meet the same conditions, and what each engine's processes spent per request.

The first version ran `vend-observed` always right after `vend`, so every observed run met
the store, the page cache and this shared machine in the state the plain run left them in.
An A/A control (both engines plain, paired the same way) moved by up to ±40 % per round on
this 2-core machine shared with other work, more than the cost being measured.  So:

- the two runs alternate which goes first, round by round (`pair_order`), and the figure
  reported is the median of the per-round ratios (observed / plain of the same round);
- each engine's CPU time (user + system, the server process and all its descendants, from
  `/proc/<pid>/stat`) is read around every run, and its CPU microseconds per request is the
  figure least moved by other load: a core taken away slows a run but costs it no CPU time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

PLAIN, OBSERVED = "vend", "vend-observed"
_TICKS = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn's workers and its resource tracker)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:  # a task that ended while being read
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants so far."""
    total = 0
    for member in descendants(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        # Fields after the command, which is in parentheses and may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICKS


def per_request_us(seconds: float, requests: int) -> float:
    return round(seconds / requests * 1e6, 1) if requests else 0.0


def pair_order(names: Sequence[str], round_number: int) -> list[str]:
    """The round's scenarios, with `vend` and `vend-observed` next to each other and, from
    round to round, alternating which of the two goes first."""
    order = list(names)
    if PLAIN in order and OBSERVED in order:
        order.remove(OBSERVED)
        at = order.index(PLAIN)
        pair = [PLAIN, OBSERVED] if round_number % 2 else [OBSERVED, PLAIN]
        order[at : at + 1] = pair
    return order


def pair_ratios(plain: Iterable[float], observed: Iterable[float]) -> list[float]:
    """Observed / plain, round by round (the two runs of one round are seconds apart)."""
    return [round(o / p, 3) for p, o in zip(plain, observed, strict=True)]
