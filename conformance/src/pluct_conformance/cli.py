"""`pluct-conformance run --url BASE ...` and `pluct-conformance compare A.json B.json`.

Exit codes of `run`: 0 every selected check ran and none failed (inconclusive checks, i.e.
upstream faults, are reported apart and never counted as passed); 1 a check failed; 2 the
target cannot be judged, or checks were skipped for missing credentials (unless
`--allow-partial`, and then the report's first line says "partial").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.status import Status

from pluct_conformance.registry import GROUPS, Check, CheckResult, register_secret
from pluct_conformance.report import STYLE, compare, render, write_json, write_junit
from pluct_conformance.runner import CannotRun, run_checks_async
from pluct_conformance.target import Target, packaged_spec


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="pluct-conformance")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="judge a deployment")
    run.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8787")
    run.add_argument("--jwt-secret", default=env("PLUCT_JWT_SECRET"), help="$PLUCT_JWT_SECRET")
    run.add_argument("--admin-key", default=env("PLUCT_ADMIN_KEY"), help="$PLUCT_ADMIN_KEY")
    run.add_argument(
        "--user-token", default=None, help="a user token, when you do not hold the secret"
    )
    run.add_argument("--profile", choices=("seed", "strict"), default="strict")
    run.add_argument("--only", action="append", help=f"a group ({', '.join(GROUPS)}) or a check id")
    run.add_argument("--expected-failures", type=Path, help="file of check ids expected to fail")
    run.add_argument(
        "--allow-partial",
        action="store_true",
        help="exit 0 although checks were skipped for missing credentials (report says partial)",
    )
    run.add_argument("--cors-origin", default=env("PLUCT_CORS_ORIGIN"), help="a configured origin")
    run.add_argument(
        "--webhook-secret",
        default=env("PLUCT_WEBHOOK_SECRET"),
        help="the secret TTTranscribe signs webhooks with ($PLUCT_WEBHOOK_SECRET)",
    )
    run.add_argument("--simulator-url", default=env("PLUCT_SIMULATOR_URL"))
    run.add_argument(
        "--simulator-secret",
        default=env("PLUCT_SIMULATOR_SECRET"),
        help="the simulator's X-Engine-Auth secret: upstream jobs are counted",
    )
    run.add_argument(
        "--race-rounds", type=int, default=210, help="rounds of the one-token race (default 210)"
    )
    run.add_argument("--junit", type=Path)
    run.add_argument("--json", type=Path)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--spec", type=Path, default=None, help="override the shipped openapi.yaml")
    commands.add_parser("list", help="list the checks")
    comparison = commands.add_parser("compare", help="side-by-side table of JSON reports")
    comparison.add_argument("reports", type=Path, nargs="+")
    comparison.add_argument("--label", action="append", help="a column's name, in order")
    return parser


def _expected(path: Path | None) -> set[str]:
    if path is None:
        return set()
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


Progress = Callable[[Check, CheckResult | None], None]


def _progress(console: Console) -> tuple[Status | None, Progress]:
    """A live line per check on a terminal; plain lines otherwise (CI logs, pipes)."""
    live = console.is_terminal
    status = console.status("starting") if live else None

    def progress(check: Check, result: CheckResult | None) -> None:
        if result is None:
            if status is not None:
                status.update(f"{check.id}: {check.description}")
            else:
                print(f"running {check.id} [{check.promise}]", flush=True)
            return
        line = f"{result.outcome.value:12} {check.id} ({result.seconds:.2f} s)"
        if live:
            console.print(f"[{STYLE[result.outcome]}]{line}[/]", highlight=False)
        else:
            print(line, flush=True)

    return status, progress


def main(argv: Sequence[str] | None = None) -> int:
    # Wrong-algorithm probes deliberately use short HMAC keys; the warning is noise here.
    warnings.filterwarnings("ignore", module="jwt")
    args = _parser().parse_args(argv)
    console = Console(stderr=False)
    if args.command == "list":
        from pluct_conformance.registry import all_checks

        for check in all_checks():
            print(f"{check.id:40} {check.profile:7} [{check.promise}] {check.description}")
        return 0
    if args.command == "compare":
        print(compare(args.reports, args.label))
        return 0
    for value, name in (
        (args.jwt_secret, "PLUCT_JWT_SECRET"),
        (args.admin_key, "PLUCT_ADMIN_KEY"),
        (args.webhook_secret, "PLUCT_WEBHOOK_SECRET"),
        (args.simulator_secret, "PLUCT_SIMULATOR_SECRET"),
    ):
        register_secret(value, name)
    target = Target(
        args.url,
        jwt_secret=args.jwt_secret,
        admin_key=args.admin_key,
        user_token=args.user_token,
        spec_path=args.spec or packaged_spec(),
        seed=args.seed,
        cors_origin=args.cors_origin,
        webhook_secret=args.webhook_secret,
        simulator_url=args.simulator_url,
        simulator_secret=args.simulator_secret,
        race_rounds=args.race_rounds,
    )
    status, progress = _progress(console)
    try:
        coro = run_checks_async(
            target,
            profile=args.profile,
            only=args.only,
            expected_failures=_expected(args.expected_failures),
            progress=progress,
            allow_partial=args.allow_partial,
        )
        if status is not None:
            with status:
                report = asyncio.run(coro)
        else:
            report = asyncio.run(coro)
    except CannotRun as exc:
        print(f"cannot run: {exc}", flush=True)
        return 2
    render(report, console)
    if args.junit:
        write_junit(report, args.junit)
    if args.json:
        write_json(report, args.json)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
