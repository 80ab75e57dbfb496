"""Run the selected checks against a target and collect a `Report`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from pluct_conformance.registry import (
    Check,
    CheckResult,
    Failure,
    Inconclusive,
    Outcome,
    Report,
    Skip,
    all_checks,
)
from pluct_conformance.target import Target


class CannotRun(Exception):
    """The target cannot be judged at all: unreachable, or credentials refused."""


def select(profile: str, only: list[str] | None = None) -> list[Check]:
    chosen = [c for c in all_checks() if profile == "strict" or c.profile == "seed"]
    if only:
        chosen = [c for c in chosen if c.group in only or c.id in only]
    return chosen


async def preflight(target: Target) -> None:
    async with target.client() as client:
        try:
            health = await client.get("/health")
        except httpx.HTTPError as exc:
            raise CannotRun(f"cannot reach {target.url}: {type(exc).__name__}") from None
        if health.status_code >= 500 and health.status_code != 503:
            raise CannotRun(f"{target.url}/health answered {health.status_code}")
        if target.admin_key:
            granted = await target.grant(client, "preflight", 1)
            if granted.status_code in (404, 405):
                raise CannotRun(f"{target.url} has no POST /v1/credits/add ({granted.status_code})")
            if granted.status_code == 401:
                raise CannotRun("the admin key was refused (401)")
        if target.jwt_secret:
            balance = await client.get("/v1/credits/balance", headers=target.bearer("preflight"))
            if balance.status_code == 401:
                raise CannotRun("tokens minted with the JWT secret were refused (401)")


async def _run_one(check: Check, target: Target, expected: set[str]) -> CheckResult:
    started = time.perf_counter()
    result = CheckResult(
        check.id, check.group, check.profile, check.description, check.promise, Outcome.PASSED
    )
    try:
        await check.fn(target)
    except Skip as exc:
        result.outcome, result.reason = Outcome.SKIPPED, str(exc)
    except Failure as exc:
        result.outcome, result.reason, result.curl = Outcome.FAILED, exc.reason, exc.curl
    except Inconclusive as exc:
        result.outcome, result.reason, result.curl = Outcome.INCONCLUSIVE, exc.reason, exc.curl
    except (TimeoutError, httpx.HTTPError) as exc:
        result.outcome, result.reason = (
            Outcome.FAILED,
            f"transport error: {type(exc).__name__}: {exc}",
        )
    except Exception as exc:
        result.outcome, result.reason = (
            Outcome.FAILED,
            f"check crashed: {type(exc).__name__}: {exc}",
        )
    if result.outcome is Outcome.FAILED and check.id in expected:
        result.outcome = Outcome.EXPECTED_FAILURE
    result.seconds = round(time.perf_counter() - started, 3)
    return result


async def run_checks_async(
    target: Target,
    profile: str = "strict",
    only: list[str] | None = None,
    expected_failures: set[str] | None = None,
    progress: Callable[[Check, CheckResult | None], None] | None = None,
    allow_partial: bool = False,
) -> Report:
    await preflight(target)
    report = Report(
        target=target.url, profile=profile, seed=target.seed, allow_partial=allow_partial
    )
    for check in select(profile, only):
        if progress:
            progress(check, None)
        result = await _run_one(check, target, expected_failures or set())
        report.results.append(result)
        if progress:
            progress(check, result)
    report.seconds = round(time.time() - report.started, 2)
    return report


def run_checks(target: Target, **options: object) -> Report:
    """Synchronous entry point, e.g. from a notebook (runs its own event loop)."""
    return asyncio.run(run_checks_async(target, **options))  # type: ignore[arg-type]
