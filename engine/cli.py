"""`pluct-engine`: serve, mint a user token, verify the ledger, run the upstream simulator."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from engine.config import DEFAULT_STORE_URL, ConfigError, Settings, generate_missing_secrets
from engine.domain.tokens import TRANSCRIBE_SCOPE, TokenAuthority


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pluct-engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP engine")
    serve.add_argument("--host", default=os.environ.get("ENGINE_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("ENGINE_PORT", "8787")))
    serve.add_argument("--store", default=None, help="sqlite:///path or redis://host:port/db")
    serve.add_argument("--workers", type=int, default=int(os.environ.get("ENGINE_WORKERS", "1")))
    serve.add_argument(
        "--dev",
        action="store_true",
        help="generate missing secrets and run the bundled upstream simulator",
    )
    serve.add_argument("--log-level", default=os.environ.get("ENGINE_LOG_LEVEL", "info"))

    mint = commands.add_parser("mint-token", help="mint a user token (needs ENGINE_JWT_SECRET)")
    mint.add_argument("--sub", required=True)
    mint.add_argument("--scope", default=TRANSCRIBE_SCOPE)
    mint.add_argument("--ttl", type=int, default=3600)

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

    sim = commands.add_parser("simulator", help="run the TTTranscribe simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8788)
    sim.add_argument("--webhook-url", default="", help="send signed job webhooks here")
    return parser


def _serve(args: argparse.Namespace) -> int:
    if args.store:
        os.environ["ENGINE_STORE_URL"] = args.store
    if args.dev:
        os.environ["ENGINE_DEV"] = "1"
        generated = generate_missing_secrets(os.environ)
        os.environ.update(generated)
        for name, value in generated.items():
            print(f"dev mode: generated {name}={value}", file=sys.stderr)
        from engine.upstream.simulator import start_background_simulator

        simulator_url = start_background_simulator(os.environ["TTT_SHARED_SECRET"])
        os.environ.setdefault("TTT_BASE", simulator_url)
        os.environ.setdefault("META_FETCH_BASE", simulator_url)
        print(f"dev mode: TTTranscribe simulator at {simulator_url}", file=sys.stderr)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"pluct-engine: {exc}", file=sys.stderr)
        return 2
    print(
        f"pluct-engine: serving http://{args.host}:{args.port} store={settings.store_url}"
        f" workers={args.workers}",
        file=sys.stderr,
    )
    from engine.http.server import serve

    return serve(
        settings, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level
    )


def _mint(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"pluct-engine: {exc}", file=sys.stderr)
        return 2
    print(TokenAuthority(settings).mint_user(args.sub, args.scope, args.ttl, time.time()))
    return 0


def _ledger(args: argparse.Namespace) -> int:
    from engine import ledger_cli

    if args.ledger_command == "prefill":
        return ledger_cli.prefill(args.store, args.entries, args.users, args.seed)
    url = args.store or os.environ.get("ENGINE_STORE_URL") or DEFAULT_STORE_URL
    return ledger_cli.verify(url, as_json=args.json, progress=not args.no_progress)


def _simulator(args: argparse.Namespace) -> int:
    from engine.upstream.simulator import run_simulator

    secret = os.environ.get("TTT_SHARED_SECRET") or os.environ.get("ENGINE_SHARED_SECRET", "")
    if not secret:
        print("pluct-engine: set TTT_SHARED_SECRET for the simulator", file=sys.stderr)
        return 2
    run_simulator(args.host, args.port, secret, args.webhook_url)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "mint-token":
        return _mint(args)
    if args.command == "ledger":
        return _ledger(args)
    return _simulator(args)
