"""`pluct-engine credits …` and `pluct-engine audit`: operator commands over the HTTP admin API.

They talk to a running engine (`--url`, the admin key from `ENGINE_ADMIN_KEY`) and never to
the store: one code path, with its audit entries and idempotency, whoever grants a credit.
Exit codes: 0 done, 1 the engine refused (its message and guidance are printed), 2 the
command could not run (no admin key, engine unreachable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from typing import Any

import httpx

from engine.config import ADMIN_KEY_NAMES

DEFAULT_URL = "http://127.0.0.1:8787"
AUDIT_PAGE = 500


class CommandError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _admin_key() -> str:
    for name in ADMIN_KEY_NAMES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise CommandError(
        "set ENGINE_ADMIN_KEY to the engine's admin key (with `serve --dev`: load"
        " data/dev-secrets.env)",
        2,
    )


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    return _exchange(args, method, path, **kwargs)[0]


def _exchange(
    args: argparse.Namespace, method: str, path: str, **kwargs: Any
) -> tuple[dict[str, Any], httpx.Headers]:
    url = args.url.rstrip("/")
    try:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            response = client.request(method, path, headers={"X-API-Key": _admin_key()}, **kwargs)
    except httpx.HTTPError as exc:
        raise CommandError(
            f"cannot reach the engine at {url} ({type(exc).__name__}); check --url / ENGINE_URL",
            2,
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise CommandError(f"{url}{path} answered {response.status_code} without JSON", 1)
    if response.status_code >= 400:
        raise CommandError(
            f"{response.status_code} {body.get('code')}: {body.get('message')}"
            f" ({body.get('guidance')}; requestId {body.get('requestId')})",
            1,
        )
    return body, response.headers


def credits_add(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {
        "userId": args.user,
        "amount": args.amount,
        "clientRequestId": args.client_request_id or f"cli-{uuid.uuid4().hex}",
    }
    if args.reason:
        payload["reason"] = args.reason
    body, headers = _exchange(args, "POST", "/v1/credits/add", json=payload)
    replayed = " (a replay: nothing added)" if headers.get("idempotent-replayed") else ""
    print(
        f"granted {body['amount']} to {body['userId']}: balance {body['balanceAfter']}"
        f" (requestId {body['requestId']}){replayed}"
    )
    return 0


def credits_balance(args: argparse.Namespace) -> int:
    body = _call(args, "GET", "/v1/admin/balance", params={"userId": args.user})
    print(f"{body['userId']}: {body['balance']} (updated {body['updatedAt']})")
    return 0


def credits_refund(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"userId": args.user, "requestId": args.request_id}
    if args.reason:
        payload["reason"] = args.reason
    body = _call(args, "POST", "/v1/credits/refund", json=payload)
    print(f"refunded {body['requestId']} to {body['userId']}: balance {body['balanceAfter']}")
    return 0


def audit(args: argparse.Namespace) -> int:
    """Every entry, oldest first, following `nextAfter` up to `--limit` entries."""
    entries: list[dict[str, Any]] = []
    after = 0
    while len(entries) < args.limit:
        page = _call(
            args,
            "GET",
            "/v1/admin/audit",
            params={
                "userId": args.user,
                "after": after,
                "limit": min(AUDIT_PAGE, args.limit - len(entries)),
            },
        )
        entries.extend(page["entries"])
        if "nextAfter" not in page:
            break
        after = page["nextAfter"]
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    print(f"{'id':>6}  {'at':24}  {'action':18} {'delta':>5} {'balance':>7}  requestId  reason")
    for entry in entries:
        print(
            f"{entry['id']:>6}  {entry['at']:24}  {entry['action']:18} {entry['delta']:>5}"
            f" {entry['balanceAfter']:>7}  {entry['requestId']}  {entry.get('reason', '')}"
        )
    print(f"{len(entries)} entries for {args.user}")
    return 0


def run(handler: Any, args: argparse.Namespace) -> int:
    try:
        code: int = handler(args)
    except CommandError as exc:
        print(f"pluct-engine: {exc}", file=sys.stderr)
        return exc.exit_code
    return code
