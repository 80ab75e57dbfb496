"""Checks, their groups and profiles, and what a run of them produced."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from pluct_conformance.target import Target

GROUPS = ("schema", "races", "auth", "hardening", "contract")
PROFILES = ("seed", "strict")


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    EXPECTED_FAILURE = "xfail"


class Failure(Exception):
    """A check's verdict: the deployment does not do what the check demands."""

    def __init__(self, reason: str, request: httpx.Request | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.curl = curl_of(request) if request is not None else ""


class Skip(Exception):
    """The check cannot judge this deployment (no secret, no upstream, ...)."""


def curl_of(request: httpx.Request) -> str:
    parts = [f"curl -sS -X {request.method} '{request.url}'"]
    for name, value in request.headers.items():
        if name.lower() in {
            "host",
            "content-length",
            "accept-encoding",
            "connection",
            "user-agent",
        }:
            continue
        parts.append(f"-H '{name}: {value}'")
    body = request.content
    if body:
        text = body.decode(errors="replace")
        parts.append(
            f"--data-raw '{text[:2000]}'" if len(text) <= 2000 else "--data-raw '<large body>'"
        )
    return " ".join(parts)


def expect(condition: bool, reason: str, response: httpx.Response | None = None) -> None:
    if not condition:
        raise Failure(reason, response.request if response is not None else None)


def expect_status(response: httpx.Response, *allowed: int) -> None:
    if response.status_code not in allowed:
        raise Failure(
            f"{response.request.method} {response.request.url.path} gave {response.status_code}"
            f" (expected {'/'.join(map(str, allowed))}): {response.text[:160]}",
            response.request,
        )


CheckFn = Callable[["Target"], Awaitable[None]]


@dataclass(frozen=True)
class Check:
    id: str
    group: str
    profile: str
    description: str
    fn: CheckFn


_REGISTRY: list[Check] = []


def check(group: str, profile: str, description: str) -> Callable[[CheckFn], CheckFn]:
    """Register a check; `profile` is `seed` (promised by the seed README) or `strict`."""
    assert group in GROUPS and profile in PROFILES

    def register(fn: CheckFn) -> CheckFn:
        _REGISTRY.append(Check(f"{group}.{fn.__name__}", group, profile, description, fn))
        return fn

    return register


def all_checks() -> list[Check]:
    from pluct_conformance import checks  # noqa: F401  (registers every check)

    return list(_REGISTRY)


@dataclass
class CheckResult:
    id: str
    group: str
    profile: str
    description: str
    outcome: Outcome
    reason: str = ""
    curl: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    target: str
    profile: str
    seed: int
    results: list[CheckResult] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    seconds: float = 0.0

    @property
    def unexpected_failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome is Outcome.FAILED]

    def counts(self, group: str | None = None) -> dict[str, int]:
        chosen = [r for r in self.results if group is None or r.group == group]
        return {o.value: sum(1 for r in chosen if r.outcome is o) for o in Outcome}
