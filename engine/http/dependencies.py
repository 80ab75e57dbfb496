"""Dependencies the controllers declare: the services, the caller, the decoded body.

Authentication lives here, so a controller states *who* may call it by the parameter it asks
for (`user`, `rate_limited_user`, `admin`) and never parses a header itself.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from engine.domain.ratelimit import RateState
from engine.domain.tokens import UserPrincipal
from engine.errors import InvalidRequest, Unauthorized
from engine.services import Services
from engine.store.records import Context

T = TypeVar("T")
AnyRequest = Request[Any, Any, State]


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated user whose request was counted against the rate limit."""

    principal: UserPrincipal
    rate: RateState | None

    def headers(self) -> dict[str, str]:
        return self.rate.headers() if self.rate else {}


def provide_services(request: AnyRequest) -> Services:
    """From the app's state itself: asking Litestar for `state: State` builds a new `State`
    (and its lock) on every request."""
    services: Services = request.app.state.services
    return services


def bearer_token(request: AnyRequest) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "Authorization header required",
            details={"providedAuth": bool(header)},
        )
    return token


def context_of(request: AnyRequest) -> Context:
    client = request.client
    return Context(
        ip=client.host if client else "",
        user_agent=request.headers.get("user-agent", "")[:256],
    )


def provide_user(request: AnyRequest, services: NamedDependency[Services]) -> UserPrincipal:
    """Synchronous on purpose: verification is CPU-only, so no coroutine is needed."""
    return services.tokens.verify_user(bearer_token(request))


async def provide_rate_limited_user(
    request: AnyRequest, services: NamedDependency[Services]
) -> Caller:
    principal = services.tokens.verify_user(bearer_token(request))
    rate = await services.limiter.hit(principal.user_id, services.clock())
    return Caller(principal, rate)


async def provide_admin(request: AnyRequest, services: NamedDependency[Services]) -> None:
    """`X-API-Key` only, compared in constant time; the key is never accepted as a Bearer."""
    supplied = request.headers.get("x-api-key", "")
    expected = services.settings.admin_key
    if not supplied or not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise Unauthorized(
            "Missing or invalid admin authentication",
            details={"providedAuth": {"hasApiKey": bool(supplied)}},
            headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'},
        )


async def decode_body(request: AnyRequest, body_type: type[T]) -> T:
    """Decode a JSON body into its Struct; an empty body reads as `{}`."""
    raw = await request.body()
    if not raw.strip():
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc), code="invalid_body", details={"error": str(exc)}) from None
    except msgspec.DecodeError:
        raise InvalidRequest("Malformed JSON in request body", code="malformed_json") from None
