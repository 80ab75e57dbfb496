"""`GET /metrics`: Prometheus exposition, for the holder of `METRICS_TOKEN` only.

Absent (404, like any unknown route) when no token is configured, so a deployment that never
asked for metrics shows nothing; with one, the token is compared in constant time.
"""

from __future__ import annotations

import hmac

from litestar import Response, get

from engine.errors import METRICS_AUTH, RouteNotFound, Unauthorized
from engine.http.dependencies import AnyRequest, bearer_token, provide_services
from engine.observability.metrics import Metrics


@get("/metrics", media_type="text/plain")
async def metrics_route(request: AnyRequest) -> Response[bytes]:
    token = provide_services(request).settings.metrics_token
    metrics: Metrics | None = request.app.state["metrics"]
    if not token or metrics is None:
        raise RouteNotFound(details={"path": "/metrics"})
    supplied = bearer_token(request, METRICS_AUTH)
    if not hmac.compare_digest(supplied.encode(), token.encode()):
        raise Unauthorized("Invalid metrics token", guidance=METRICS_AUTH)
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
