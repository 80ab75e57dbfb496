"""A deliberately simple engine to prove the suite is honest.

`FixtureEngine()` behaves; `FixtureEngine(defects={"double_spend"})` has exactly the named
defects, so each check can be seen to fail on its defect and pass without it.  Defects:

- `racy_spend`: vends read the balance, await, then write (the original Worker's KV spend).
- `user_tokens_transcribe`: a user token transcribes for free.
- `double_spend`: "already used?" is checked, then an await, then the token is marked used.
- `hidden_double_spend`: like `double_spend`, but every submission is told the first job id
  (only the upstream's stats, `GET /__stats`, show the extra jobs).
- `refund_keeps_token`, `big_jwt`, `lax_exp`, `unicode_digits`, `newline_ids`, `poll_leaks`,
  `cors_any`, `no_head`, `unsigned_webhooks`, `webhook_replays`, `meta_400`, `big_headers`,
  `vend_wants_device` (vends refused with a 400 for a field the app does not send).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

import jwt
import uvicorn

SECRET = "fixture-jwt-secret-0123456789abcdef"
ADMIN = "fixture-admin-key-0123456789abcdef"
WEBHOOK = "fixture-webhook-secret-0123456789ab"
ORIGIN = "https://app.fixture.example"
_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
_DIGITS = re.compile(r"[0-9]+")
Reply = tuple[int, Any, dict[str, str]]


def _error(status: int, code: str) -> Reply:
    return status, {"ok": False, "code": code, "message": code, "details": {}}, {}


class FixtureEngine:
    def __init__(
        self,
        *,
        racy_spend: bool = False,
        user_tokens_transcribe: bool = False,
        defects: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.defects = set(defects)
        if racy_spend:
            self.defects.add("racy_spend")
        if user_tokens_transcribe:
            self.defects.add("user_tokens_transcribe")
        self.balances: dict[str, int] = {}
        self.vends: dict[str, tuple[str, str]] = {}  # requestId -> (user, jti)
        self.refunded: set[str] = set()
        self.used: dict[str, str] = {}  # jti -> jobId
        self.jobs: dict[str, str] = {}  # jobId -> owner
        self.upstream_ids: dict[str, str] = {}  # the requestId sent upstream -> jobId
        self.webhook_keys: set[str] = set()
        self.upstream_jobs = 0
        self.grant_keys: set[str] = set()
        self.audit: dict[str, list[str]] = {}
        self.lock = asyncio.Lock()

    # -- ASGI ----------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        method = scope["method"]
        status, payload, extra = await self.route(
            "GET" if method == "HEAD" and "no_head" not in self.defects else method,
            scope["path"],
            headers,
            query,
            body,
        )
        if method == "HEAD" and "no_head" in self.defects:
            status, payload, extra = _error(405, "method_not_allowed")
        raw = b"" if method == "HEAD" or payload is None else json.dumps(payload).encode()
        out = [(b"content-type", b"application/json")]
        out += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": raw})

    # -- identities ----------------------------------------------------------------------
    def _claims(self, headers: dict[str, str]) -> dict[str, Any] | str:
        token = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if len(token) > 8192 and "big_jwt" not in self.defects:
            return "invalid_token"
        try:
            claims = jwt.decode(
                token,
                SECRET,
                algorithms=["HS256"],
                options={"require": ["exp", "sub"], "verify_aud": False},
            )
        except (jwt.InvalidTokenError, OverflowError):
            return "invalid_token"
        exp = claims.get("exp")
        if "lax_exp" not in self.defects and not (isinstance(exp, int) and 0 < exp < 2**40):
            return "invalid_token"
        return dict(claims)

    # -- routes --------------------------------------------------------------------------
    async def route(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        query: dict[str, str],
        body: bytes,
    ) -> Reply:
        if method == "OPTIONS":
            origin = headers.get("origin", "")
            allowed = "cors_any" in self.defects or origin == ORIGIN
            extra = {"access-control-allow-origin": origin} if allowed else {}
            return 204, None, extra
        if path == "/health":
            return 200, {"status": "ok", "uptimeSeconds": 1, "version": "fixture"}, {}
        if path == "/health/services":
            return 200, {"ttt": {"status": "healthy"}, "circuitBreaker": {"status": "closed"}}, {}
        if path == "/__stats":
            if headers.get("x-engine-auth") != WEBHOOK:
                return _error(401, "unauthorized")
            return 200, {"jobs_created": self.upstream_jobs}, {}
        if path == "/meta":
            url = query.get("url", "")
            if "tiktok.com" not in url:
                return _error(400 if "meta_400" in self.defects else 422, "invalid_url")
            return _error(502, "metadata_fetch_failed")
        if path == "/webhooks/tttranscribe" and method == "POST":
            return self.webhook(headers, body)
        if path.startswith("/v1/") and headers.get("x-api-key") == ADMIN:
            return self.admin(path, query, json.loads(body or b"{}"))
        if path in ("/v1/credits/add", "/v1/credits/refund", "/v1/admin/audit"):
            return _error(401, "unauthorized")
        claims = self._claims(headers)
        if isinstance(claims, str):
            return _error(401, claims)
        user = str(claims["sub"])
        if path == "/v1/credits/balance":
            balance = self.balances.get(user, 0)
            return (
                200,
                {"userId": user, "balance": balance, "main": balance, "bonus": 0, "updatedAt": "x"},
                {},
            )
        if path == "/v1/vend-token" and method == "POST":
            if "vend_wants_device" in self.defects:  # a body shape the app never sends
                return (
                    400,
                    {
                        "success": False,
                        "error": {
                            "name": "ZodError",
                            "issues": [{"path": ["deviceId"], "message": "Required"}],
                        },
                    },
                    {},
                )
            return await self.vend(user)
        if path == "/ttt/transcribe" and method == "POST":
            return await self.transcribe(claims, json.loads(body or b"{}"))
        if path.startswith("/ttt/poll/"):
            job_id = path.removeprefix("/ttt/poll/")
            owner = self.jobs.get(job_id)
            if owner is None or (owner != user and "poll_leaks" not in self.defects):
                return _error(404, "job_not_found")
            return 200, {"jobId": job_id, "status": "queued"}, {}
        return _error(404, "route_not_found")

    def admin(self, path: str, query: dict[str, str], data: dict[str, Any]) -> Reply:
        if path == "/v1/credits/add":
            user = str(data.get("userId", ""))
            valid = _ID.match(user) if "newline_ids" in self.defects else _ID.fullmatch(user)
            if not valid:
                return _error(400, "invalid_request")
            key = data.get("clientRequestId")
            if key is None or key not in self.grant_keys:
                self.grant_keys.add(key) if key else None
                self.balances[user] = self.balances.get(user, 0) + int(data["amount"])
            return 200, {"ok": True, "newBalance": self.balances[user]}, {}
        if path == "/v1/credits/refund":
            user, jti = self.vends.get(str(data.get("requestId")), ("", ""))
            if user != data.get("userId"):
                return _error(404, "vend_not_found")
            if "refund_keeps_token" not in self.defects:
                self.refunded.add(jti)
            self.balances[user] += 1
            return 200, {"ok": True, "refunded": True}, {}
        if path == "/v1/admin/audit":
            limit = query.get("limit", "100")
            if "unicode_digits" in self.defects:
                count = int(limit)  # int() reads "٣" and raises on "²": a 500 below
            elif _DIGITS.fullmatch(limit):
                count = int(limit)
            else:
                return _error(400, "invalid_request")
            return 200, {"ok": True, "entries": self.audit.get(query["userId"], [])[:count]}, {}
        return _error(404, "route_not_found")

    async def vend(self, user: str) -> Reply:
        if not await self.spend(user):
            return _error(402, "insufficient_credits")
        jti, request_id = uuid.uuid4().hex, uuid.uuid4().hex
        self.vends[request_id] = (user, jti)
        claims = {
            "sub": user,
            "scope": "ttt:transcribe",
            "vended": True,
            "jti": jti,
            "exp": int(time.time()) + 900,
        }
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        return (
            200,
            {
                "ok": True,
                "token": token,
                "expiresIn": 900,
                "scope": "ttt:transcribe",
                "expiresAt": "x",
                "balanceAfter": self.balances[user],
                "requestId": request_id,
            },
            {},
        )

    async def transcribe(self, claims: dict[str, Any], data: dict[str, Any]) -> Reply:
        if not claims.get("vended") and "user_tokens_transcribe" not in self.defects:
            return _error(401, "invalid_token")
        jti = str(claims.get("jti", "user"))
        if jti in self.refunded:
            return _error(401, "token_refunded")
        racy = self.defects & {"double_spend", "hidden_double_spend"}
        if "user_tokens_transcribe" not in self.defects and jti in self.used:
            return _error(401, "token_used")
        if racy:
            await asyncio.sleep(0.005)  # the gap between "used?" and "mark used"
        job_id = str(uuid.uuid4())
        self.upstream_jobs += 1
        if "hidden_double_spend" in self.defects:
            job_id = self.used.setdefault(jti, job_id)
        else:
            self.used[jti] = job_id
        self.jobs[job_id] = str(claims["sub"])
        upstream_request = "eng_" + uuid.uuid4().hex
        self.upstream_ids[upstream_request] = job_id
        return (
            202,
            {
                "jobId": job_id,
                "status": "queued",
                "url": data.get("url", ""),
                "requestId": upstream_request,
            },
            {},
        )

    def webhook(self, headers: dict[str, str], body: bytes) -> Reply:
        data = json.loads(body)
        signed = {
            k: data.get(k)
            for k in ("jobId", "requestId", "status", "usage", "timestamp", "idempotencyKey")
        }
        text = json.dumps(signed, separators=(",", ":"), ensure_ascii=False)
        good = hmac.new(WEBHOOK.encode(), text.encode(), hashlib.sha256).hexdigest()
        given = headers.get("x-tttranscribe-signature", "")
        if not hmac.compare_digest(good, given) and "unsigned_webhooks" not in self.defects:
            return _error(401, "invalid_signature")
        key = str(data.get("idempotencyKey"))
        if key in self.webhook_keys and "webhook_replays" not in self.defects:
            return _error(409, "already_processed")
        if data.get("requestId") not in self.upstream_ids:
            return _error(404, "request_not_found")
        self.webhook_keys.add(key)
        return 200, {"received": True}, {}

    async def spend(self, user: str) -> bool:
        if "racy_spend" in self.defects:
            balance = self.balances.get(user, 0)
            await asyncio.sleep(0.002)  # the gap the original's KV read-modify-write had
            if balance <= 0:
                return False
            self.balances[user] = balance - 1
            return True
        async with self.lock:
            if self.balances.get(user, 0) <= 0:
                return False
            self.balances[user] -= 1
            return True


class Served:
    """Run an ASGI app on a free loopback port in a thread."""

    def __init__(self, app: Any, **config: Any) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        big = getattr(app, "defects", set()) & {"big_headers"}
        if big:
            config.setdefault("h11_max_incomplete_event_size", 4 << 20)
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", http="h11", **config)
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> Served:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("fixture server died")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
