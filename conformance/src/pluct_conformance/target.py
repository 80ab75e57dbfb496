"""The deployment under test and how to talk to it the way the mobile app and the operator do.

Requests are shaped like the real Android client's (see the mobile-client reference): its
headers on every call, vends with `{"userId": <sub>, "clientRequestId": ...}`, transcription
with the vended token.  A step a target refuses raises `Failure` carrying what it said.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import jwt

from pluct_conformance.registry import Failure, Inconclusive, Skip, is_upstream_fault, said

TRANSCRIBE_SCOPE = "ttt:transcribe"
APP_AUDIENCE = "pluct-business-engine"
APP_VERSION = "1.0.3"
VIDEO_URL = "https://www.tiktok.com/@pluct_conformance/video/7300000000000000042"


def packaged_spec() -> Path:
    return Path(str(resources.files("pluct_conformance").joinpath("openapi.yaml")))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def request_id() -> str:
    """An id in the app's format, `req_` + 24 hex characters."""
    return "req_" + secrets.token_hex(12)


@dataclass
class Target:
    url: str
    jwt_secret: str | None = None
    admin_key: str | None = None
    user_token: str | None = None
    spec_path: Path = field(default_factory=packaged_spec)
    seed: int = 0
    cors_origin: str | None = None
    webhook_secret: str | None = None
    simulator_url: str | None = None
    simulator_secret: str | None = None
    race_rounds: int = 210  # thirty of each size 2-8: the 2-worker race shows in most runs
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _upstream: str | None = None

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")

    def client(self, connections: int = 100) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    # -- identities ----------------------------------------------------------------------
    def user_id(self, label: str) -> str:
        return f"conf-{self.run_id}-{label}"

    @property
    def can_mint(self) -> bool:
        return bool(self.jwt_secret)

    def mint(
        self,
        sub: str | None,
        *,
        scope: str | None = TRANSCRIBE_SCOPE,
        ttl: int = 900,
        secret: str | None = None,
        algorithm: str = "HS256",
        **claims: Any,
    ) -> str:
        """A user token as the latest app mints it; override any claim to make it wrong."""
        key = secret or self.jwt_secret
        if not key:
            raise Skip("needs --jwt-secret to mint user tokens")
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": sub,
            "aud": APP_AUDIENCE,
            "scope": scope,
            "iat": now,
            "exp": now + ttl,
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key, algorithm=algorithm)

    def sign_raw(self, payload_json: str) -> str:
        """An HS256 token over exactly this payload text (claims no JWT library would emit)."""
        if not self.jwt_secret:
            raise Skip("needs --jwt-secret to mint user tokens")
        head = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(payload_json.encode())
        mac = hmac.new(self.jwt_secret.encode(), head.encode(), hashlib.sha256).digest()
        return head + "." + _b64(mac)

    def app_headers(self, label: str | None = None, token: str | None = None) -> dict[str, str]:
        """The headers the Android client sends on every call (§3 of the client reference)."""
        rid = request_id()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"PluctMobile/{APP_VERSION} (android)",
            "X-Request-ID": rid,
            "X-Client-Request-Id": rid,
            "X-Client-Version": APP_VERSION,
            "X-Client-Version-Code": "5",
            "X-Client-Platform": "android",
        }
        if label is not None:
            device = hashlib.sha256(self.user_id(label).encode()).hexdigest()[:16]
            headers["X-User-Id"] = self.user_id(label)
            headers["X-Device-Id"] = f"device-{device}"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def bearer(self, label: str, **claims: Any) -> dict[str, str]:
        """App headers with a user token for `label` (claims overridable)."""
        if self.jwt_secret:
            return self.app_headers(label, self.mint(self.user_id(label), **claims))
        if self.user_token and not claims:
            return self.app_headers(label, self.user_token)
        raise Skip("needs --jwt-secret (or --user-token) for user calls")

    def service(self, token: str) -> dict[str, str]:
        """App headers carrying a vended service token."""
        return self.app_headers(None, token)

    def admin(self) -> dict[str, str]:
        if not self.admin_key:
            raise Skip("needs --admin-key")
        return {"Content-Type": "application/json", "X-API-Key": self.admin_key}

    # -- common steps --------------------------------------------------------------------
    async def grant(
        self, client: httpx.AsyncClient, label: str, amount: int, key: str | None = None
    ) -> httpx.Response:
        body: dict[str, Any] = {"userId": self.user_id(label), "amount": amount}
        if key:
            body["clientRequestId"] = key
        return await client.post("/v1/credits/add", headers=self.admin(), json=body)

    async def funded(self, client: httpx.AsyncClient, label: str, amount: int) -> dict[str, str]:
        """A user holding exactly `amount` credits (the label must be fresh); their headers."""
        if not self.jwt_secret:
            raise Skip("needs --jwt-secret to create users with known balances")
        response = await self.grant(client, label, amount)
        if response.status_code != 200:
            raise Failure(
                f"setup: granting credits was refused: {said(response)}", response.request
            )
        return self.bearer(label)

    def vend_body(self, label: str, key: str | None = None) -> dict[str, str]:
        return {"userId": self.user_id(label), "clientRequestId": key or request_id()}

    async def vend_response(
        self, client: httpx.AsyncClient, label: str, key: str | None = None
    ) -> httpx.Response:
        return await client.post(
            "/v1/vend-token", headers=self.bearer(label), json=self.vend_body(label, key)
        )

    async def vend_body_of(self, client: httpx.AsyncClient, label: str) -> dict[str, Any]:
        response = await self.vend_response(client, label)
        if response.status_code != 200:
            raise Failure(f"setup: the vend was refused: {said(response)}", response.request)
        return dict(response.json())

    async def vend(self, client: httpx.AsyncClient, label: str) -> str:
        return str((await self.vend_body_of(client, label))["token"])

    async def submit(
        self, client: httpx.AsyncClient, token: str, url: str = VIDEO_URL
    ) -> httpx.Response:
        return await client.post(
            "/ttt/transcribe",
            headers=self.service(token),
            json={"url": url, "clientRequestId": request_id()},
        )

    async def accepted_job(self, client: httpx.AsyncClient, label: str) -> tuple[str, str]:
        """Fund, vend and submit one job; (token, jobId). Upstream faults are inconclusive."""
        await self.funded(client, label, 1)
        token = await self.vend(client, label)
        response = await self.submit(client, token)
        if is_upstream_fault(response):
            raise Inconclusive(f"upstream fault: {said(response)}", response.request)
        if response.status_code not in (200, 202):
            raise Failure(f"setup: the job was refused: {said(response)}", response.request)
        return token, str(response.json().get("jobId"))

    async def require_upstream(self, client: httpx.AsyncClient) -> None:
        """Inconclusive unless a paid transcription can succeed here (probed once)."""
        if self._upstream is None:
            try:
                await self.accepted_job(client, "upstream-probe")
                self._upstream = ""
            except (Inconclusive, Failure) as exc:
                self._upstream = exc.reason
        if self._upstream:
            raise Inconclusive(f"no working upstream behind this deployment ({self._upstream})")

    # -- the simulator behind a test deployment (optional) --------------------------------
    async def simulator_stats(self) -> dict[str, Any] | None:
        """The upstream simulator's counters, when its URL and secret were given."""
        if not (self.simulator_url and self.simulator_secret):
            return None
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(
                self.simulator_url.rstrip("/") + "/__stats",
                headers={"X-Engine-Auth": self.simulator_secret},
            )
        if response.status_code != 200:
            raise Failure(f"the simulator's stats were refused: {said(response)}")
        return dict(response.json())

    async def simulator_jobs(self) -> int | None:
        """Jobs the upstream simulator has created."""
        stats = await self.simulator_stats()
        return None if stats is None else int(stats["jobs_created"])

    async def last_upstream_job(self) -> str | None:
        """The upstream id of the job the engine last polled (from the simulator's request
        log); a deployment never shows its upstream's ids to clients."""
        stats = await self.simulator_stats()
        polled = [p for p in (stats or {}).get("paths", []) if p.startswith("GET /status/")]
        return polled[-1].removeprefix("GET /status/") if polled else None


def webhook_delivery(
    secret: str, job_id: str, request_id_: str, status: str = "completed"
) -> tuple[dict[str, Any], dict[str, str]]:
    """A TTTranscribe webhook body and headers, signed by the upstream's recipe (§8.3)."""
    timestamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    key = hashlib.sha256(f"{job_id}-{status}-{timestamp}".encode()).hexdigest()
    usage = {
        "audioDurationSeconds": 12.5,
        "transcriptCharacters": 64 if status == "completed" else 0,
        "modelUsed": "openai-whisper-base",
        "processingTimeSeconds": 3,
    }
    signed = {
        "jobId": job_id,
        "requestId": request_id_,
        "status": status,
        "usage": usage,
        "timestamp": timestamp,
        "idempotencyKey": key,
    }
    text = json.dumps(signed, separators=(",", ":"), ensure_ascii=False)
    signature = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    body: dict[str, Any] = {**signed}
    if status == "completed":
        body["cacheHit"] = False
    else:
        body["error"] = "simulated failure"
    body["signature"] = signature
    headers = {
        "Content-Type": "application/json",
        "X-TTTranscribe-Signature": signature,
        "X-Idempotency-Key": key,
        "User-Agent": "node-fetch",
    }
    return body, headers


async def gather_limited(coros: list[Any], limit: int = 200) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
