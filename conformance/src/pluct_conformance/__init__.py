"""Conformance suite for Pluct Business Engine deployments.

    from pluct_conformance import Target, run_checks
    report = run_checks(Target("http://127.0.0.1:8787", jwt_secret=..., admin_key=...))

It speaks HTTP only and never imports the engine, so it judges any deployment alike.
"""

from pluct_conformance.registry import CheckResult, Outcome, Report, all_checks
from pluct_conformance.runner import run_checks, run_checks_async
from pluct_conformance.target import Target

__all__ = [
    "CheckResult",
    "Outcome",
    "Report",
    "Target",
    "all_checks",
    "run_checks",
    "run_checks_async",
]
__version__ = "1.0.0"
