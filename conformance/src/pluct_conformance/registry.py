"""Checks, the promise each one tests, and what a run of them produced."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from pluct_conformance.target import Target

GROUPS = ("schema", "races", "auth", "hardening", "contract", "webhooks")
PROFILES = ("seed", "strict")
# Codes a deployment uses when the fault is its upstream's (TTTranscribe, TikTok), not its own.
UPSTREAM_CODES = {
    "upstream_error",
    "upstream_timeout",
    "upstream_unavailable",
    "metadata_fetch_failed",
    "metadata_unavailable",
    "circuit_open",
}


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"
    EXPECTED_FAILURE = "xfail"


class Failure(Exception):
    """A check's verdict: the deployment does not do what the check demands."""

    def __init__(self, reason: str, request: httpx.Request | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.curl = curl_of(request) if request is not None else ""


class Inconclusive(Exception):
    """An upstream fault (TTTranscribe or TikTok unreachable) kept the check from judging."""

    def __init__(self, reason: str, request: httpx.Request | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.curl = curl_of(request) if request is not None else ""


class Skip(Exception):
    """The check cannot judge this deployment without a credential or option it lacks."""


# Secret values the suite was given, and the environment variable each is shown as in
# reproducers: a curl command in a report must never carry the admin key itself.
_SECRETS: dict[str, str] = {}


def register_secret(value: str | None, env_name: str) -> None:
    if value:
        _SECRETS[value] = env_name


def _redact(text: str) -> str:
    for value, name in _SECRETS.items():
        text = text.replace(value, f"${name}")
    return text


def _shell_quote(text: str) -> str:
    """Double quotes, so `$ENV_NAME` expands; the rest escaped for the shell."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
    escaped = escaped.replace("$", "\\$")
    for value, name in _SECRETS.items():
        escaped = escaped.replace(value.replace("$", "\\$"), f"${name}")
    return f'"{escaped}"'


def curl_of(request: httpx.Request) -> str:
    """A curl command that sends the same request (secrets as `$ENV_NAME`)."""
    parts = [f"curl -sS -i -X {request.method} {_shell_quote(str(request.url))}"]
    for name, value in request.headers.items():
        if name.lower() in {"host", "content-length", "accept-encoding", "connection"}:
            continue
        if len(value) > 2000:
            parts.append(f"-H \"{name}: $(head -c {len(value)} /dev/zero | tr '\\0' a)\"")
        else:
            parts.append(f"-H {_shell_quote(f'{name}: {value}')}")
    body = request.content
    if body:
        text = body.decode(errors="replace")
        parts.append(
            f"--data-raw {_shell_quote(text)}"
            if len(text) <= 2000
            else f"--data-binary @<(head -c {len(body)} /dev/zero)  # a {len(body)}-byte body"
        )
    return " ".join(parts)


def error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    code = body.get("code") or body.get("error") if isinstance(body, dict) else ""
    return code if isinstance(code, str) else ""


def is_upstream_fault(response: httpx.Response) -> bool:
    """A 5xx the deployment blames on its upstream (502/503/504 or an upstream code)."""
    if response.status_code < 500:
        return False
    return error_code(response).lower() in UPSTREAM_CODES or (
        response.status_code in (502, 504) and error_code(response).lower().startswith("upstream")
    )


def said(response: httpx.Response) -> str:
    """What the target answered, for a reason line."""
    text = " ".join(response.text.split())[:200]
    return f"{response.request.method} {response.request.url.path} → {response.status_code} {text}"


def expect(condition: bool, reason: str, response: httpx.Response | None = None) -> None:
    if not condition:
        raise Failure(_redact(reason), response.request if response is not None else None)


def expect_status(response: httpx.Response, *allowed: int, upstream_ok: bool = True) -> None:
    """The status must be one of `allowed`. An upstream fault is inconclusive, not a failure,
    unless `upstream_ok` is False (the request should have been refused before any upstream)."""
    if response.status_code in allowed:
        return
    if upstream_ok and is_upstream_fault(response):
        raise Inconclusive(f"upstream fault: {said(response)}", response.request)
    raise Failure(
        _redact(f"expected {'/'.join(map(str, allowed))}: {said(response)}"), response.request
    )


def expect_code(response: httpx.Response, status: int, code: str) -> None:
    """A refusal with exactly this status and envelope `code`."""
    expect_status(response, status)
    expect(
        error_code(response) == code,
        f"expected code {code!r}: {said(response)}",
        response,
    )


CheckFn = Callable[["Target"], Awaitable[None]]


@dataclass(frozen=True)
class Check:
    id: str
    group: str
    profile: str
    description: str
    promise: str
    fn: CheckFn


_REGISTRY: list[Check] = []


def check(
    group: str, profile: str, description: str, *, promise: str
) -> Callable[[CheckFn], CheckFn]:
    """Register a check. `profile` is `seed` (a promise of the seed README) or `strict` (our
    spec's stricter rules); `promise` names where the rule is written (seed section or spec
    path), and is shown beside every verdict."""
    assert group in GROUPS and profile in PROFILES and promise

    def register(fn: CheckFn) -> CheckFn:
        _REGISTRY.append(Check(f"{group}.{fn.__name__}", group, profile, description, promise, fn))
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
    promise: str
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
    allow_partial: bool = False

    @property
    def unexpected_failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome is Outcome.FAILED]

    @property
    def skipped(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome is Outcome.SKIPPED]

    @property
    def verdict(self) -> str:
        """`fail`, `partial` (checks skipped and allowed), `incomplete` (skipped, not allowed)
        or `pass`. Inconclusive checks are reported apart and never counted as passed."""
        if self.unexpected_failures:
            return "fail"
        if self.skipped:
            return "partial" if self.allow_partial else "incomplete"
        return "pass"

    @property
    def exit_code(self) -> int:
        return {"fail": 1, "incomplete": 2, "partial": 0, "pass": 0}[self.verdict]

    def counts(self, group: str | None = None) -> dict[str, int]:
        chosen = [r for r in self.results if group is None or r.group == group]
        return {o.value: sum(1 for r in chosen if r.outcome is o) for o in Outcome}
