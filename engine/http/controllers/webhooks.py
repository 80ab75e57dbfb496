"""`POST /webhooks/tttranscribe`: TTTranscribe reports a job's terminal state (signed)."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.types import ASGIApp

from engine.domain.webhooks import WEBHOOK_MAX_BYTES
from engine.http.dependencies import AnyRequest, header, read_body
from engine.http.responses import PreparedJSON
from engine.services import Services


class WebhooksController(Controller):
    path = "/webhooks"

    @post("/tttranscribe", status_code=200)
    async def tttranscribe(
        self, request: AnyRequest, services: NamedDependency[Services]
    ) -> ASGIApp:
        """No bearer: the HMAC signature is the authentication (see `engine.domain.webhooks`)."""
        raw = await read_body(request, WEBHOOK_MAX_BYTES)
        body = await services.webhooks.receive(raw, header(request, b"x-tttranscribe-signature"))
        return PreparedJSON(body, 200)
