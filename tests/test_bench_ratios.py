"""The benchmark's arithmetic: which ceiling runs each run is compared with.

The README's throughput claims rest on it, and a pairing off by one round would still print
plausible percentages, so it is checked here rather than trusted.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "tools" / "bench.py"
    spec = importlib.util.spec_from_file_location("tools_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its own module up there
    spec.loader.exec_module(module)
    return module


def _runs(bench: ModuleType, rates: list[float]) -> list[object]:
    return [bench.Result("sqlite", 1, "vend", rate, 1.0, 2.0, 100, {}) for rate in rates]


def test_each_round_is_measured_against_the_ceilings_that_open_it_and_the_next(
    bench: ModuleType,
) -> None:
    # Three rounds opened by ceilings of 100, 200 and 300 req/s, and a closing ceiling of 400.
    yardsticks = bench._bracketing([100.0, 200.0, 300.0, 400.0])
    assert yardsticks == [150.0, 250.0, 350.0]
    ratios = bench._ratios(_runs(bench, [75.0, 125.0, 350.0]), yardsticks)
    assert ratios == [0.5, 0.5, 1.0]
    assert bench._median(ratios) == 0.5


def test_a_round_without_its_ceiling_is_refused(bench: ModuleType) -> None:
    # Without the closing ceiling there is one yardstick fewer than rounds: that is a bug in
    # the harness, not a ratio to report.
    yardsticks = bench._bracketing([100.0, 200.0])
    with pytest.raises(ValueError, match="shorter"):
        bench._ratios(_runs(bench, [50.0, 60.0]), yardsticks)


def test_a_vend_run_whose_answers_spent_nothing_is_refused(bench: ModuleType) -> None:
    """A 200 for a replayed key spends no credit: more than 1 % of them and the run measured
    replays, not vends."""
    honest = bench.Result("sqlite", 1, "vend", 100.0, 1.0, 2.0, 1000, {"2xx/3xx": 1000})
    honest.replay_fraction = 0.004
    replayed = bench.Result("sqlite", 1, "vend", 100.0, 1.0, 2.0, 1000, {"2xx/3xx": 1000})
    replayed.replay_fraction = 0.75
    assert not honest.replays_refused and replayed.replays_refused
    assert bench._answered({"200": 7, "2xx/3xx": 3, "402": 5}) == 10


def test_every_wrk_run_sends_keys_of_its_own(bench: ModuleType, tmp_path: Path) -> None:
    scenario = bench.Scenario("vend", ["/v1/vend-token"], "POST", ["t1", "t2"], keyed=True)
    script = bench._lua(scenario, tmp_path).read_text()
    assert 'prefix = args[1] or "bench"' in script
    assert """'{"clientRequestId":"' .. prefix .. '-' .. id""" in script
