"""The suite must report what is wrong: run it against deliberately broken fixtures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fixture_engine import ADMIN, SECRET, FixtureEngine, Served
from pluct_conformance.cli import main
from pluct_conformance.registry import Outcome, all_checks
from pluct_conformance.runner import _run_one
from pluct_conformance.target import Target


def _check(check_id: str):  # type: ignore[no-untyped-def]
    return next(c for c in all_checks() if c.id == check_id)


def _outcome(app: FixtureEngine, check_id: str) -> Outcome:
    with Served(app) as served:
        target = Target(served.url, jwt_secret=SECRET, admin_key=ADMIN)
        return asyncio.run(_run_one(_check(check_id), target, set())).outcome


@pytest.mark.parametrize(("racy", "expected"), [(True, Outcome.FAILED), (False, Outcome.PASSED)])
def test_bank_check_catches_a_read_then_write_spend(racy: bool, expected: Outcome) -> None:
    assert _outcome(FixtureEngine(racy_spend=racy), "races.bank") is expected


@pytest.mark.parametrize(("lax", "expected"), [(True, Outcome.FAILED), (False, Outcome.PASSED)])
def test_transcribe_check_catches_user_tokens(lax: bool, expected: Outcome) -> None:
    assert (
        _outcome(FixtureEngine(user_tokens_transcribe=lax), "auth.user_token_on_transcribe")
        is expected
    )


def test_exit_codes_reports_and_expected_failures(tmp_path: Path) -> None:
    unreachable = main(
        ["run", "--url", "http://127.0.0.1:9", "--jwt-secret", SECRET, "--admin-key", ADMIN]
    )
    assert unreachable == 2
    with Served(FixtureEngine(racy_spend=True)) as served:
        args = [
            "run",
            "--url",
            served.url,
            "--jwt-secret",
            SECRET,
            "--admin-key",
            ADMIN,
            "--only",
            "races.bank",
        ]
        assert main([*args, "--admin-key", "wrong"]) == 2
        junit, report = tmp_path / "out.xml", tmp_path / "out.json"
        assert main([*args, "--junit", str(junit), "--json", str(report)]) == 1
        assert "<failure" in junit.read_text()
        assert json.loads(report.read_text())["counts"]["failed"] == 1
        expected = tmp_path / "expected.txt"
        expected.write_text("# the original Worker's known defect\nraces.bank\n")
        assert main([*args, "--expected-failures", str(expected)]) == 0


def test_every_check_names_a_known_group_and_profile() -> None:
    checks = all_checks()
    assert len({c.id for c in checks}) == len(checks) >= 30
    assert {c.profile for c in checks} == {"seed", "strict"}


def test_the_suite_never_imports_the_engine() -> None:
    package = Path(__file__).parents[1] / "src" / "pluct_conformance"
    for source in package.rglob("*.py"):
        text = source.read_text()
        assert "import engine" not in text and "from engine" not in text, source
