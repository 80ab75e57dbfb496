"""The deployment under test and how to talk to it as users and as the operator."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import jwt

from pluct_conformance.registry import Skip

TRANSCRIBE_SCOPE = "ttt:transcribe"
APP_AUDIENCE = "pluct-business-engine"
VIDEO_URL = "https://www.tiktok.com/@pluct_conformance/video/7300000000000000042"


def packaged_spec() -> Path:
    return Path(str(resources.files("pluct_conformance").joinpath("openapi.yaml")))


@dataclass
class Target:
    url: str
    jwt_secret: str | None = None
    admin_key: str | None = None
    user_token: str | None = None
    spec_path: Path = field(default_factory=packaged_spec)
    seed: int = 0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _upstream: bool | None = None

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
        """A user token as the mobile app mints it; override any claim to make it wrong."""
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

    def bearer(self, label: str, **claims: Any) -> dict[str, str]:
        if self.jwt_secret:
            return {"Authorization": f"Bearer {self.mint(self.user_id(label), **claims)}"}
        if self.user_token and not claims:
            return {"Authorization": f"Bearer {self.user_token}"}
        raise Skip("needs --jwt-secret (or --user-token) for user calls")

    def admin(self) -> dict[str, str]:
        if not self.admin_key:
            raise Skip("needs --admin-key")
        return {"X-API-Key": self.admin_key}

    # -- common steps --------------------------------------------------------------------
    async def grant(self, client: httpx.AsyncClient, label: str, amount: int) -> httpx.Response:
        return await client.post(
            "/v1/credits/add",
            headers=self.admin(),
            json={"userId": self.user_id(label), "amount": amount},
        )

    async def funded(self, client: httpx.AsyncClient, label: str, amount: int) -> dict[str, str]:
        if not self.jwt_secret:
            raise Skip("needs --jwt-secret to create users with known balances")
        response = await self.grant(client, label, amount)
        if response.status_code != 200:
            raise Skip(f"could not grant credits ({response.status_code})")
        return self.bearer(label)

    async def vend(self, client: httpx.AsyncClient, user_headers: dict[str, str]) -> str:
        response = await client.post("/v1/vend-token", headers=user_headers, json={})
        if response.status_code != 200:
            raise Skip(f"could not vend a token ({response.status_code})")
        return str(response.json()["token"])

    async def upstream_available(self, client: httpx.AsyncClient) -> bool:
        """Whether a paid transcription can succeed here (checked once, costs one credit)."""
        if self._upstream is None:
            try:
                headers = await self.funded(client, "upstream-probe", 1)
                token = await self.vend(client, headers)
                response = await client.post(
                    "/ttt/transcribe",
                    json={"url": VIDEO_URL},
                    headers={"Authorization": f"Bearer {token}"},
                )
                self._upstream = response.status_code in (200, 202)
            except (Skip, httpx.HTTPError):
                self._upstream = False
        return self._upstream

    async def require_upstream(self, client: httpx.AsyncClient) -> None:
        if not await self.upstream_available(client):
            raise Skip("no working upstream behind this deployment")


async def gather_limited(coros: list[Any], limit: int = 200) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
