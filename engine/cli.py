"""`pluct-engine`: serve, mint a user token, operate credits and the audit, verify the ledger,
run the upstream simulator."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from engine import cli_admin
from engine.config import (
    DEFAULT_STORE_URL,
    JWT_SECRET_NAMES,
    ConfigError,
    Settings,
    derive_vend_secret,
)
from engine.domain.tokens import TRANSCRIBE_SCOPE, TokenAuthority
from engine.startup import (
    DEFAULT_DEV_SECRETS,
    StartupError,
    check_port,
    check_store,
    dev_secrets,
    prepare_multiprocess_metrics,
    redacted,
)

_SERVE_ENV = f"""\
environment (flags win over variables):
  ENGINE_JWT_SECRET      user-token secret (aliases JWT_SECRET, ENGINE_SHARED_SECRET); required
  ENGINE_ADMIN_KEY       admin key for X-API-Key (aliases ADMIN_SECRET, ADMIN_API_KEY); required
  TTT_SHARED_SECRET      secret sent to TTTranscribe (alias ENGINE_SHARED_SECRET); required
  ENGINE_VEND_SECRET     vended-token key; default: derived from the admin key
  ENGINE_STORE_URL       --store; default {DEFAULT_STORE_URL}
  ENGINE_HOST            --host; default 127.0.0.1
  ENGINE_PORT            --port; default 8787
  ENGINE_WORKERS         --workers; default 1
  ENGINE_LOG_LEVEL       --log-level; default info
  ENGINE_DEV_SECRETS     --dev-secrets; default {DEFAULT_DEV_SECRETS}
  TTT_BASE               upstream base URL; default http://127.0.0.1:8788 (--dev: the simulator)
  META_FETCH_BASE        metadata fetch base; default empty = TikTok itself
  LOG_FORMAT             human | json; default human
  ACCESS_LOG             on | off: one line per request; default on
  METRICS_TOKEN          enables GET /metrics for `Authorization: Bearer <token>`; default unset
  METRICS_PORT           also serve metrics on 127.0.0.1:<port> (no token); default unset
  PROMETHEUS_MULTIPROC_DIR  metrics files with --workers > 1; default a fresh temp directory
  RATE_LIMIT_PER_MINUTE, IDEMPOTENCY_TTL_SECONDS, JWT_LEEWAY_SECONDS, BREAKER_*: see README

example:
  pluct-engine serve --dev                         # secrets in {DEFAULT_DEV_SECRETS}, simulator
  ENGINE_STORE_URL=redis://127.0.0.1:6379/0 pluct-engine serve --workers 2 --host 0.0.0.0
"""

_ADMIN_ENV = """\
environment:
  ENGINE_ADMIN_KEY   the engine's admin key (aliases ADMIN_SECRET, ADMIN_API_KEY); required
  ENGINE_URL         --url; default http://127.0.0.1:8787

example:
  {example}
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (a bad `ENGINE_PORT` is a configuration problem too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _sub(
    commands: argparse._SubParsersAction[_Parser],
    name: str,
    text: str,
    epilog: str,
) -> _Parser:
    return commands.add_parser(
        name,
        help=text,
        description=text,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("ENGINE_URL", cli_admin.DEFAULT_URL),
        help="the running engine (default: ENGINE_URL or %(default)s)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pluct-engine",
        description=__doc__,
        epilog="`pluct-engine COMMAND --help` lists each command's variables and an example.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = _sub(commands, "serve", "run the HTTP engine", _SERVE_ENV)
    serve.add_argument("--host", default=os.environ.get("ENGINE_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=os.environ.get("ENGINE_PORT", "8787"))
    serve.add_argument("--store", default=None, help="sqlite:///path or redis://host:port/db")
    serve.add_argument("--workers", type=int, default=os.environ.get("ENGINE_WORKERS", "1"))
    serve.add_argument(
        "--dev",
        action="store_true",
        help="take missing secrets from --dev-secrets (generated once) and run the simulator",
    )
    serve.add_argument(
        "--dev-secrets",
        type=Path,
        default=Path(os.environ.get("ENGINE_DEV_SECRETS", DEFAULT_DEV_SECRETS)),
        help="where --dev keeps its generated secrets, mode 0600 (default: %(default)s)",
    )
    serve.add_argument("--log-level", default=os.environ.get("ENGINE_LOG_LEVEL", "info"))

    mint = _sub(
        commands,
        "mint-token",
        "mint a user token, as the mobile app does (needs only the JWT secret)",
        "environment:\n  ENGINE_JWT_SECRET   user-token secret (aliases JWT_SECRET,"
        " ENGINE_SHARED_SECRET); required\n\nexample:\n"
        "  TOKEN=$(pluct-engine mint-token --sub alice --ttl 600)\n",
    )
    mint.add_argument("--sub", required=True, help="the user id")
    mint.add_argument("--scope", default=TRANSCRIBE_SCOPE, help="default: %(default)s")
    mint.add_argument("--ttl", type=int, default=3600, help="seconds (default: %(default)s)")

    credit = _sub(
        commands,
        "credits",
        "grant, read or refund credits on a running engine",
        _ADMIN_ENV.format(example="pluct-engine credits add alice 5 --reason 'welcome'"),
    )
    credit_commands = credit.add_subparsers(dest="credits_command", required=True)
    add = _sub(
        credit_commands,
        "add",
        "grant whole credits to a user",
        _ADMIN_ENV.format(example="pluct-engine credits add alice 5 --reason welcome"),
    )
    add.add_argument("user")
    add.add_argument("amount", type=int)
    add.add_argument("--reason", default="", help="kept in the audit entry")
    add.add_argument(
        "--client-request-id",
        default="",
        help="idempotency key: the same key again adds nothing (default: a fresh one)",
    )
    _url_option(add)
    balance = _sub(
        credit_commands,
        "balance",
        "a user's balance",
        _ADMIN_ENV.format(example="pluct-engine credits balance alice"),
    )
    balance.add_argument("user")
    _url_option(balance)
    refund = _sub(
        credit_commands,
        "refund",
        "give back the credit of one vend, named by its requestId",
        _ADMIN_ENV.format(example="pluct-engine credits refund req_0123abcd --user alice"),
    )
    refund.add_argument("request_id", metavar="REQUEST_ID")
    refund.add_argument("--user", required=True)
    refund.add_argument("--reason", default="", help="kept in the audit entry")
    _url_option(refund)

    trail = _sub(
        commands,
        "audit",
        "a user's audit trail, oldest first",
        _ADMIN_ENV.format(example="pluct-engine audit alice --json"),
    )
    trail.add_argument("user")
    trail.add_argument("--json", action="store_true", help="print the entries as JSON")
    trail.add_argument("--limit", type=int, default=1000, help="at most (default: %(default)s)")
    _url_option(trail)

    ledger = commands.add_parser("ledger", help="ledger tools")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True)
    check = ledger_commands.add_parser(
        "verify", help="check the credit invariants; exit 1 if broken"
    )
    check.add_argument("--store", default=None)
    check.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    check.add_argument(
        "--no-progress", action="store_true", help="no progress bar even on a terminal"
    )
    fill = ledger_commands.add_parser(
        "prefill", help="fill a store with realistic history through its own batch path"
    )
    fill.add_argument("--store", required=True)
    fill.add_argument("--entries", type=int, required=True, help="ledger entries to add")
    fill.add_argument("--users", type=int, default=None, help="default: entries / 20")
    fill.add_argument("--seed", type=int, default=0)

    sim = _sub(
        commands,
        "simulator",
        "run the TTTranscribe simulator",
        "environment:\n  TTT_SHARED_SECRET   the secret the engine sends; required\n\n"
        "example:\n  TTT_SHARED_SECRET=dev pluct-engine simulator --port 8788\n",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8788)
    sim.add_argument("--webhook-url", default="", help="send signed job webhooks here")
    return parser


def _serve(args: argparse.Namespace) -> int:
    """Every check that can fail runs before anything says it is serving (issue 20)."""
    if args.store:
        os.environ["ENGINE_STORE_URL"] = args.store
    if args.workers < 1:
        raise StartupError(f"--workers / ENGINE_WORKERS: {args.workers}; use 1 or more")
    if args.dev:
        os.environ["ENGINE_DEV"] = "1"
        written = dev_secrets(os.environ, args.dev_secrets)
        verb = "generated into" if written else "read from"
        print(
            f"dev mode: secrets {verb} {args.dev_secrets.resolve()} (mode 0600, reused on the"
            " next start; `set -a; . FILE; set +a` loads them into a shell)",
            file=sys.stderr,
        )
    settings = Settings.from_env()
    check_store(settings.store_url)
    check_port(args.host, args.port)
    if settings.metrics_port:
        check_port("127.0.0.1", settings.metrics_port, "METRICS_PORT")
    if settings.metrics_port or (settings.metrics_token and args.workers > 1):
        prepare_multiprocess_metrics(os.environ)
    if settings.metrics_port:
        from engine.observability.metrics import serve_on_loopback

        serve_on_loopback(settings.metrics_port)
    if args.dev:
        from engine.upstream.sim_server import start_background_simulator

        simulator_url = start_background_simulator(os.environ["TTT_SHARED_SECRET"])
        os.environ.setdefault("TTT_BASE", simulator_url)
        os.environ.setdefault("META_FETCH_BASE", simulator_url)
        print(f"dev mode: TTTranscribe simulator at {simulator_url}", file=sys.stderr)
    print(
        f"pluct-engine: serving http://{args.host}:{args.port} store={redacted(settings.store_url)}"
        f" workers={args.workers}",
        file=sys.stderr,
    )
    from engine.http.server import serve

    return serve(
        settings, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level
    )


def _mint(args: argparse.Namespace) -> int:
    """Only the JWT secret: minting a user token needs nothing else (issue 20)."""
    secret = next((v for n in JWT_SECRET_NAMES if (v := os.environ.get(n, "").strip())), "")
    if not secret:
        raise ConfigError(
            "set ENGINE_JWT_SECRET (or JWT_SECRET) to the user-token secret; with"
            f" `serve --dev` it is in {DEFAULT_DEV_SECRETS}"
        )
    settings = Settings(
        jwt_secret=secret, admin_key="", vend_secret=derive_vend_secret(secret), ttt_secret=""
    )
    print(TokenAuthority(settings).mint_user(args.sub, args.scope, args.ttl, time.time()))
    return 0


def _ledger(args: argparse.Namespace) -> int:
    from engine import ledger_cli

    if args.ledger_command == "prefill":
        return ledger_cli.prefill(args.store, args.entries, args.users, args.seed)
    url = args.store or os.environ.get("ENGINE_STORE_URL") or DEFAULT_STORE_URL
    return ledger_cli.verify(url, as_json=args.json, progress=not args.no_progress)


def _simulator(args: argparse.Namespace) -> int:
    from engine.upstream.sim_server import run_simulator

    secret = os.environ.get("TTT_SHARED_SECRET") or os.environ.get("ENGINE_SHARED_SECRET", "")
    if not secret:
        print("pluct-engine: set TTT_SHARED_SECRET for the simulator", file=sys.stderr)
        return 2
    run_simulator(args.host, args.port, secret, args.webhook_url)
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "mint-token":
        return _mint(args)
    if args.command == "credits":
        handlers = {
            "add": cli_admin.credits_add,
            "balance": cli_admin.credits_balance,
            "refund": cli_admin.credits_refund,
        }
        return cli_admin.run(handlers[args.credits_command], args)
    if args.command == "audit":
        return cli_admin.run(cli_admin.audit, args)
    if args.command == "ledger":
        return _ledger(args)
    return _simulator(args)


def main(argv: Sequence[str] | None = None) -> int:
    """A configuration or environment problem is one line on stderr and exit 2, never a
    traceback."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ConfigError, StartupError) as exc:
        print(f"pluct-engine: {exc}", file=sys.stderr)
        return 2
