"""CORS for browsers on the origins in `CORS_ORIGINS` (default none: no CORS at all).

Litestar's CORS middleware answers preflights itself (204 with the allowed methods and
headers) and adds `Access-Control-Allow-Origin` to responses for a listed origin.  Credentials
are not allowed: the API authenticates with Bearer headers, not cookies.

An unlisted origin is treated as no origin at all: its request goes on as a same-origin one
would (a preflight gets the plain 204 with `Allow`), with no `Access-Control-*` header, which
is what tells the browser no.  Litestar would otherwise answer such a preflight 400 with a
plain-text body, outside the one error envelope.
"""

from __future__ import annotations

from typing import Any

from litestar.config.cors import CORSConfig
from litestar.types import ASGIApp, Receive, Scope, Send

from engine.config import Settings

ALLOWED_METHODS = ["GET", "HEAD", "POST", "OPTIONS"]
ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-API-Key", "X-Client-Request-Id"]
EXPOSED_HEADERS = ["Retry-After", "RateLimit", "RateLimit-Policy", "Idempotent-Replayed"]


def cors_config(settings: Settings) -> CORSConfig | None:
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_methods=ALLOWED_METHODS,  # type: ignore[arg-type]  # Litestar's Method literal
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )


def drop_unlisted_origins(app: ASGIApp, config: CORSConfig | None) -> ASGIApp:
    """Remove the `Origin` header of a request from an origin `config` does not list."""
    if config is None:
        return app

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers", [])
        origin = next((v for k, v in headers if k == b"origin"), None)
        if origin is not None and not config.is_origin_allowed(origin.decode("latin-1")):
            kept: Any = {**scope, "headers": [(k, v) for k, v in headers if k != b"origin"]}
            scope = kept
        await app(scope, receive, send)

    return handle
