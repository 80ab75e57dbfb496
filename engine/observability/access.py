"""The ASGI middleware that gives each request its id, its access line and its metrics.

It wraps the whole Litestar handler (routing, the exception handler, CORS), so a 404 for an
unknown route and a 500 are logged and counted like any other answer.  One middleware and no
per-route work: the vend route is the hottest path in the engine and pays for this once.
"""

from __future__ import annotations

import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from engine.observability.context import begin, request_id_from
from engine.observability.logs import AccessLog
from engine.observability.metrics import Metrics

UNMATCHED = "unmatched"  # the route of a request no route matched (never its raw path)
_HTTP: str = ScopeType.HTTP.value


class Observed:
    """`X-Request-Id` in and out, one access line, one set of metric updates per request."""

    def __init__(self, app: ASGIApp, access_log: AccessLog | None, metrics: Metrics | None) -> None:
        self._app = app
        self._log = access_log
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != _HTTP:
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope["method"]  # type: ignore[typeddict-item]  # an http scope
        incoming = None
        for name, value in scope["headers"]:  # ASGI header names are lowercase
            if name == b"x-request-id":
                incoming = value
                break
        info = begin(request_id_from(incoming))
        echoed = (b"x-request-id", info.request_id.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("path_template") or UNMATCHED
            if self._log is not None:
                self._log.write(
                    self._log.line(
                        method, route, status, seconds * 1000, info.user_id, info.request_id
                    )
                )
            if self._metrics is not None:
                self._metrics.request(method, route, status, seconds, info.outcome, info.error_code)
