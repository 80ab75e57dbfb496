"""Dependencies the controllers declare: the services, the caller, the decoded body.

Authentication lives here, so a controller states *who* may call it by the parameter it asks
for (`user`, `rate_limited_user`, `admin`) and never parses a header itself.
"""

from __future__ import annotations

import hmac
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from engine.domain.ratelimit import RateState
from engine.domain.tokens import UserPrincipal
from engine.errors import ADMIN_AUTH, USER_AUTH, InvalidRequest, PayloadTooLarge, Unauthorized
from engine.observability.context import current_request_id, note_user
from engine.services import Services
from engine.store.records import Context

T = TypeVar("T")
AnyRequest = Request[Any, Any, State]


class Caller(msgspec.Struct, frozen=True):
    """An authenticated user whose request was counted against the rate limit."""

    principal: UserPrincipal
    rate: RateState | None

    def headers(self) -> dict[str, str]:
        return self.rate.headers() if self.rate else {}


def provide_services(request: AnyRequest) -> Services:
    """From the app's state itself: asking Litestar for `state: State` builds a new `State`
    (and its lock) on every request.  By key, not attribute: `State.__getattr__` is reached
    only after a failed lookup has built and discarded an AttributeError."""
    services: Services = request.app.state["services"]
    return services


def header(request: AnyRequest, name: bytes) -> str | None:
    """One request header (the first when repeated), `name` in lowercase.

    Read straight from the ASGI scope: Litestar's `request.headers` builds a case-insensitive
    multidict on first use, which costs more than everything else a cheap route does with its
    headers (see the README's Benchmarks).
    """
    for key, value in request.scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def bearer_token(request: AnyRequest, guidance: str = USER_AUTH) -> str:
    """`guidance` names the token that works on the route (user, vended, either)."""
    authorization = header(request, b"authorization") or ""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "Authorization header required",
            details={"providedAuth": bool(authorization)},
            guidance=guidance,
        )
    return token


def context_of(request: AnyRequest) -> Context:
    client = request.scope.get("client")
    return Context(
        ip=client[0] if client else "",
        user_agent=(header(request, b"user-agent") or "")[:256],
        http_request_id=current_request_id(),
    )


async def provide_rate_limited_user(
    request: AnyRequest, services: NamedDependency[Services]
) -> Caller:
    principal = services.tokens.verify_user(bearer_token(request))
    note_user(principal.user_id)
    rate = await services.limiter.hit(principal.user_id, services.clock())
    return Caller(principal, rate)


async def provide_admin(request: AnyRequest, services: NamedDependency[Services]) -> None:
    """`X-API-Key` only, compared in constant time; the key is never accepted as a Bearer."""
    supplied = header(request, b"x-api-key") or ""
    expected = services.settings.admin_key
    if not supplied or not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise Unauthorized(
            "Missing or invalid admin authentication",
            details={"providedAuth": {"hasApiKey": bool(supplied)}},
            headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'},
            guidance=ADMIN_AUTH,
        )


async def read_body(request: AnyRequest, limit: int) -> bytes:
    """The whole body, straight from ASGI `receive`, refused past `limit` bytes.

    Litestar's `request.body()` collects the same bytes through an async generator, several
    times the cost of the one `receive` a small JSON body takes.
    """
    announced = header(request, b"content-length") or ""
    if announced.isdigit() and int(announced) > limit:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            raise InvalidRequest("The request body ended early", code="incomplete_body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge()
        if not message.get("more_body", False):
            return b"".join(chunks) + chunk if chunks else chunk
        chunks.append(chunk)


async def decode_body(request: AnyRequest, body_type: type[T]) -> T:
    """Decode a JSON body into its Struct; an empty body reads as `{}`."""
    raw = await read_body(request, provide_services(request).settings.max_body_bytes)
    if not raw.strip():
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc), code="invalid_body", details={"error": str(exc)}) from None
    except msgspec.DecodeError:
        raise InvalidRequest("Malformed JSON in request body", code="malformed_json") from None
