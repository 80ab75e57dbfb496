"""`pluct-conformance run --url BASE ...`: exit 0 pass, 1 unexpected failure, 2 cannot run."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from pluct_conformance.registry import GROUPS, Check, CheckResult
from pluct_conformance.report import STYLE, render, write_json, write_junit
from pluct_conformance.runner import CannotRun, run_checks_async
from pluct_conformance.target import Target, packaged_spec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pluct-conformance")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="judge a deployment")
    run.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8787")
    run.add_argument("--jwt-secret", default=os.environ.get("PLUCT_JWT_SECRET"))
    run.add_argument("--admin-key", default=os.environ.get("PLUCT_ADMIN_KEY"))
    run.add_argument(
        "--user-token", default=None, help="a user token, when you do not hold the secret"
    )
    run.add_argument("--profile", choices=("seed", "strict"), default="strict")
    run.add_argument("--only", action="append", help=f"a group ({', '.join(GROUPS)}) or a check id")
    run.add_argument("--expected-failures", type=Path, help="file of check ids expected to fail")
    run.add_argument("--junit", type=Path)
    run.add_argument("--json", type=Path)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--spec", type=Path, default=None, help="override the shipped openapi.yaml")
    commands.add_parser("list", help="list the checks")
    return parser


def _expected(path: Path | None) -> set[str]:
    if path is None:
        return set()
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


def main(argv: Sequence[str] | None = None) -> int:
    # Wrong-algorithm probes deliberately use short HMAC keys; the warning is noise here.
    warnings.filterwarnings("ignore", module="jwt")
    args = _parser().parse_args(argv)
    console = Console(stderr=False)
    if args.command == "list":
        from pluct_conformance.registry import all_checks

        for check in all_checks():
            console.print(f"{check.id:45} {check.profile:7} {check.description}")
        return 0
    target = Target(
        args.url,
        jwt_secret=args.jwt_secret,
        admin_key=args.admin_key,
        user_token=args.user_token,
        spec_path=args.spec or packaged_spec(),
        seed=args.seed,
    )

    status = console.status("starting")

    def progress(check: Check, result: CheckResult | None) -> None:
        if result is None:
            status.update(f"{check.id}: {check.description}")
        else:
            console.print(
                f"[{STYLE[result.outcome]}]{result.outcome.value:7}[/] {check.id} "
                f"[dim]({result.seconds:.2f} s)[/dim]"
            )

    try:
        with status:
            report = asyncio.run(
                run_checks_async(
                    target,
                    profile=args.profile,
                    only=args.only,
                    expected_failures=_expected(args.expected_failures),
                    progress=progress,
                )
            )
    except CannotRun as exc:
        console.print(f"[bold red]cannot run:[/bold red] {exc}")
        return 2
    render(report, console)
    if args.junit:
        write_junit(report, args.junit)
    if args.json:
        write_json(report, args.json)
    return 1 if report.unexpected_failures else 0


if __name__ == "__main__":
    sys.exit(main())
