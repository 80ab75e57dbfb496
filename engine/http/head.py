"""`HEAD` on every `GET` route, answered as the GET would be, without the body.

Litestar routes by method before any middleware runs, so a route declared `GET` refuses
`HEAD` with 405; load balancers and uptime probes send `HEAD /health`.  This wraps the app's
root handler: the request is routed as a GET, the status and headers (`Content-Length`
included, as RFC 9110 allows) go out unchanged, the body bytes are dropped.  A route without
GET still answers 405, because it is routed as a GET it does not have.
"""

from __future__ import annotations

from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send


def head_as_get(app: ASGIApp) -> ASGIApp:
    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "HEAD":  # websocket and lifespan scopes have no method
            await app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        get_scope: Any = {**scope, "method": "GET"}
        try:
            await app(get_scope, receive, send_without_body)
        finally:  # the route it matched, for the access log and metrics around this handler
            if "path_template" in get_scope:
                scope["path_template"] = get_scope["path_template"]

    return handle
