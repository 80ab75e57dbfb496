"""A deliberately simple engine to prove the suite is honest.

`FixtureEngine(racy_spend=True)` spends with a read, an await, then a write (the original
Worker's defect); `user_tokens_transcribe=True` lets a user token transcribe for free.  With
both flags off it behaves, so the same checks can be seen to pass and to fail.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from typing import Any

import jwt
import uvicorn

SECRET = "fixture-jwt-secret-0123456789abcdef"
ADMIN = "fixture-admin-key-0123456789abcdef"


class FixtureEngine:
    def __init__(self, *, racy_spend: bool = False, user_tokens_transcribe: bool = False) -> None:
        self.racy_spend = racy_spend
        self.user_tokens_transcribe = user_tokens_transcribe
        self.balances: dict[str, int] = {}
        self.used: set[str] = set()
        self.lock = asyncio.Lock()

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
        status, payload = await self.route(scope["method"], scope["path"], headers, body)
        raw = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    def _user(self, headers: dict[str, str]) -> dict[str, Any] | None:
        token = headers.get("authorization", "").removeprefix("Bearer ").strip()
        try:
            return jwt.decode(
                token,
                SECRET,
                algorithms=["HS256"],
                options={"require": ["exp", "sub"], "verify_aud": False},
            )
        except jwt.InvalidTokenError:
            return None

    async def route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        error = {"ok": False, "code": "unauthorized", "message": "no", "details": {}}
        if path == "/health":
            return 200, {"status": "ok", "uptimeSeconds": 1, "version": "fixture"}
        if path == "/v1/credits/add" and method == "POST":
            if headers.get("x-api-key") != ADMIN:
                return 401, error
            data = json.loads(body or b"{}")
            self.balances[data["userId"]] = self.balances.get(data["userId"], 0) + int(
                data["amount"]
            )
            return 200, {"ok": True, "newBalance": self.balances[data["userId"]]}
        claims = self._user(headers)
        if claims is None:
            return 401, error
        user = claims["sub"]
        if path == "/v1/credits/balance":
            return 200, {
                "ok": True,
                "userId": user,
                "balance": self.balances.get(user, 0),
                "main": self.balances.get(user, 0),
                "bonus": 0,
                "updatedAt": "x",
            }
        if path == "/v1/vend-token" and method == "POST":
            if not await self.spend(user):
                return 402, {**error, "code": "insufficient_credits"}
            token = jwt.encode(
                {
                    "sub": user,
                    "scope": "ttt:transcribe",
                    "vended": True,
                    "jti": uuid.uuid4().hex,
                    "exp": int(time.time()) + 900,
                },
                SECRET,
                algorithm="HS256",
            )
            return 200, {
                "ok": True,
                "token": token,
                "expiresIn": 900,
                "balanceAfter": self.balances[user],
                "requestId": uuid.uuid4().hex,
            }
        if path == "/ttt/transcribe" and method == "POST":
            if not claims.get("vended") and not self.user_tokens_transcribe:
                return 401, error
            jti = claims.get("jti", "user")
            if jti in self.used and not self.user_tokens_transcribe:
                return 401, error
            self.used.add(jti)
            url = json.loads(body or b"{}").get("url", "")
            return 202, {"jobId": uuid.uuid4().hex, "status": "queued", "url": url}
        return 404, {**error, "code": "route_not_found"}

    async def spend(self, user: str) -> bool:
        if self.racy_spend:
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

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
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
