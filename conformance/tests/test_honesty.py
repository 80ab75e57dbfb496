"""The suite must report what is wrong: each check is run against a fixture engine with exactly
the defect it looks for (it must fail) and against the same fixture without it (it must pass)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fixture_engine import ADMIN, ORIGIN, SECRET, WEBHOOK, FixtureEngine, Served
from pluct_conformance.cli import main
from pluct_conformance.registry import Outcome, all_checks
from pluct_conformance.runner import _run_one
from pluct_conformance.target import Target

# (check, the defect it must catch[, words its reason must contain])
DEFECTS = [
    ("races.bank_race", "racy_spend", "overspend:"),
    ("races.bank", "racy_spend"),
    ("auth.user_token_on_transcribe", "user_tokens_transcribe"),
    ("races.one_token_one_job", "double_spend", "distinct job ids"),
    ("races.one_token_one_job", "hidden_double_spend", "simulator created"),
    ("auth.refunded_token", "refund_keeps_token"),
    ("hardening.oversized_header", "big_headers"),
    ("auth.oversized_jwt", "big_jwt"),
    ("auth.exp_out_of_range", "lax_exp"),
    ("hardening.non_ascii_digits", "unicode_digits"),
    ("hardening.trailing_newline_id", "newline_ids"),
    ("contract.poll_route", "poll_leaks"),
    ("contract.cors_preflight", "cors_any"),
    ("contract.head_routes", "no_head"),
    ("webhooks.forged_signature", "unsigned_webhooks"),
    ("webhooks.signed_delivery_rules", "webhook_replays"),
    ("contract.meta_invalid_url", "meta_400"),
]


def _check(check_id: str):  # type: ignore[no-untyped-def]
    return next(c for c in all_checks() if c.id == check_id)


def _result(app: FixtureEngine, check_id: str):  # type: ignore[no-untyped-def]
    with Served(app) as served:
        target = Target(
            served.url,
            jwt_secret=SECRET,
            admin_key=ADMIN,
            cors_origin=ORIGIN,
            webhook_secret=WEBHOOK,
            simulator_url=served.url,
            simulator_secret=WEBHOOK,
            race_rounds=14,
        )
        return asyncio.run(_run_one(_check(check_id), target, set()))


@pytest.mark.parametrize("case", DEFECTS, ids=lambda case: f"{case[0]}-{case[1]}")
def test_check_fails_on_its_defect(case: tuple[str, ...]) -> None:
    check_id, defect, *words = case
    result = _result(FixtureEngine(defects={defect}), check_id)
    assert result.outcome is Outcome.FAILED, result.reason
    assert all(word in result.reason for word in words), result.reason


@pytest.mark.parametrize("check_id", sorted({case[0] for case in DEFECTS}))
def test_check_passes_on_a_correct_engine(check_id: str) -> None:
    result = _result(FixtureEngine(), check_id)
    assert result.outcome is Outcome.PASSED, result.reason


def test_a_refused_request_shape_reports_what_the_target_said() -> None:
    result = _result(FixtureEngine(defects={"vend_wants_device"}), "contract.vend_lifetime")
    assert result.outcome is Outcome.FAILED
    assert "the vend was refused: POST /v1/vend-token → 400" in result.reason
    assert "ZodError" in result.reason and "curl" in result.curl


def test_an_upstream_fault_is_inconclusive_and_exits_0(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with Served(FixtureEngine()) as served:
        args = ["run", "--url", served.url, "--jwt-secret", SECRET, "--admin-key", ADMIN]
        report = tmp_path / "r.json"
        assert main([*args, "--only", "contract.meta_cache", "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["counts"]["inconclusive"] == 1 and data["counts"]["passed"] == 0
    assert "inconclusive" in data["summary"]


def test_missing_credentials_exit_2_unless_partial_is_allowed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with Served(FixtureEngine()) as served:
        args = ["run", "--url", served.url, "--only", "auth"]
        assert main(args) == 2
        capsys.readouterr()
        report = tmp_path / "partial.json"
        assert main([*args, "--allow-partial", "--json", str(report)]) == 0
    out = capsys.readouterr().out.splitlines()
    first_report_line = next(line for line in out if line.startswith(("PASS", "PARTIAL")))
    assert first_report_line.startswith("PARTIAL") and "partial" in first_report_line
    data = json.loads(report.read_text())
    assert data["verdict"] == "partial" and data["counts"]["skipped"] > 0


def test_exit_codes_reports_reproducers_and_compare(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    unreachable = main(
        ["run", "--url", "http://127.0.0.1:9", "--jwt-secret", SECRET, "--admin-key", ADMIN]
    )
    assert unreachable == 2
    reports = []
    for defects in ({"user_tokens_transcribe", "newline_ids"}, set()):
        with Served(FixtureEngine(defects=defects)) as served:
            args = ["run", "--url", served.url, "--jwt-secret", SECRET, "--admin-key", ADMIN]
            args += ["--only", "auth.user_token_on_transcribe"]
            args += ["--only", "hardening.trailing_newline_id"]
            assert main([*args, "--admin-key", "wrong"]) == 2
            junit, report = tmp_path / "out.xml", tmp_path / f"out-{len(defects)}.json"
            code = main([*args, "--junit", str(junit), "--json", str(report)])
            assert code == (1 if defects else 0)
            reports.append(report)
            if defects:
                assert "<failure" in junit.read_text()
                data = json.loads(report.read_text())
                assert data["counts"]["failed"] == 2
                curl = next(r for r in data["results"] if r["id"].endswith("newline_id"))["curl"]
                assert "$PLUCT_ADMIN_KEY" in curl and ADMIN not in curl
                expected = tmp_path / "expected.txt"
                expected.write_text(
                    "auth.user_token_on_transcribe  # known\nhardening.trailing_newline_id\n"
                )
                assert main([*args, "--expected-failures", str(expected)]) == 0
    capsys.readouterr()
    assert main(["compare", *map(str, reports)]) == 0
    table = capsys.readouterr().out
    assert (
        "| `auth.user_token_on_transcribe` |" in table
        and "**failed**" in table
        and "passed" in table
    )


def test_every_check_names_a_group_profile_and_promise() -> None:
    checks = all_checks()
    assert len({c.id for c in checks}) == len(checks) >= 50
    assert {c.profile for c in checks} == {"seed", "strict"}
    assert all(c.promise.startswith(("seed: ", "spec: ")) for c in checks)
    assert sum(c.profile == "seed" for c in checks) >= 20


def test_the_suite_never_imports_the_engine() -> None:
    package = Path(__file__).parents[1] / "src" / "pluct_conformance"
    for source in package.rglob("*.py"):
        text = source.read_text()
        assert "import engine" not in text and "from engine" not in text, source
