"""One exception handler that renders every failure as the one error envelope.

`{ok:false, code, message, details, guidance, requestId}` plus, for a few errors, fields the
seed README promised at the top level (402 adds `error` and `balance`; 429 adds
`retryAfterSeconds`).  Nothing else ever reaches the client: no stack trace, no exception text
from a library, no 500 for bad input.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp

from engine.errors import (
    EngineError,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    ServiceUnavailable,
)
from engine.http.responses import PreparedJSON
from engine.observability.context import current_request_id, note_error
from engine.store.protocol import StoreUnavailable

log = logging.getLogger("engine.http")


class _Envelope(Response[bytes]):
    """An error envelope whose ASGI form is its finished bytes.

    Litestar makes the `Response` an exception handler returns into an `ASGIResponse`, which
    cost a refusal (a 402 from an empty balance, a 429) about a tenth of its time; the body is
    final already, so it goes out as `PreparedJSON`, like every successful JSON answer.
    """

    def to_asgi_response(  # type: ignore[override]  # Litestar only calls what this returns
        self, app: Any, request: Any, **options: Any
    ) -> ASGIApp:
        return PreparedJSON(self.content, self.status_code or 500, self.headers)


def _envelope(error: EngineError) -> Response[bytes]:
    """`requestId` is the request's own id, the one in `X-Request-Id` and its log lines."""
    note_error(error.error_code)
    body: dict[str, Any] = {
        "ok": False,
        "code": error.error_code,
        "message": error.text,
        "details": error.details,
        "guidance": error.guidance_text,
        "requestId": current_request_id(),
        **error.extra,
    }
    return _Envelope(
        msgspec.json.encode(body),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def _from_litestar(request: Request[Any, Any, Any], exc: HTTPException) -> EngineError:
    """Translate the framework's own refusals into our vocabulary."""
    if exc.status_code == 404:
        return RouteNotFound(details={"path": request.url.path})
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow", "")
        return MethodNotAllowed(details={"method": request.method}, headers={"Allow": allow})
    if exc.status_code == 413:
        return PayloadTooLarge()
    if 400 <= exc.status_code < 500:
        extra = exc.extra if isinstance(exc.extra, (dict, list)) else None
        return InvalidRequest(str(exc.detail), details={"errors": extra} if extra else None)
    return EngineError()


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, EngineError):
        error = exc
    elif isinstance(exc, StoreUnavailable):
        log.warning("store unavailable: %s", exc)
        error = ServiceUnavailable(
            # Not "nothing was changed": a reply lost on the wire may follow a write that
            # happened.  The client's idempotency key makes its retry safe either way.
            "Storage is unavailable; retry with the same clientRequestId",
            code="store_unavailable",
            headers={"Retry-After": "1"},
        )
    elif isinstance(exc, HTTPException):
        error = _from_litestar(request, exc)
    else:
        # The route template, never the raw path: that is user text (see observability.logs).
        log.exception(
            "unhandled error on %s %s", request.method, request.scope.get("path_template")
        )
        error = EngineError()
    return _envelope(error)
