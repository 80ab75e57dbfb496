"""`POST /v1/vend-token`: one credit buys one short-lived transcription token."""

from __future__ import annotations

from litestar import Controller, post
from litestar.types import ASGIApp
from msgspec import UNSET

from engine.domain.idempotency import client_key
from engine.domain.tokens import TRANSCRIBE_SCOPE
from engine.http.bodies import VendRequest, VendResponse
from engine.http.dependencies import (
    AnyRequest,
    bearer_token,
    context_of,
    decode_body,
    header,
    provide_services,
)
from engine.http.responses import json_response
from engine.observability.context import note_outcome, note_user
from engine.timeutil import iso


class VendController(Controller):
    path = "/v1/vend-token"

    @post("/", status_code=200)
    async def vend(self, request: AnyRequest) -> ASGIApp:
        """Rate limiting happens inside the vend so a 429 leaves its audit entry.

        The hottest route, so it asks for the request alone and calls `provide_services` and
        the token check itself, which spares it Litestar's dependency resolution (a measurable
        share of a vend; see the README's Benchmarks).  Errors still go to the one exception
        handler.
        """
        services = provide_services(request)
        user = services.tokens.verify_user(bearer_token(request))
        note_user(user.user_id)
        data = await decode_body(request, VendRequest)
        key = client_key(data.client_request_id, header(request, b"x-client-request-id"))
        vended = await services.credits.vend(
            user, client_key=key, claimed_user_id=data.user_id, context=context_of(request)
        )
        receipt = vended.receipt
        body = VendResponse(
            token=vended.token,
            service_token=vended.token,
            scope=TRANSCRIBE_SCOPE,
            expires_in=max(0, receipt.expires_at - int(services.clock())),
            expires_at=iso(receipt.expires_at),
            balance_after=receipt.balance_after,
            request_id=receipt.request_id,
            client_request_id=receipt.client_request_id or UNSET,
        )
        headers = vended.rate.headers() if vended.rate else {}
        if vended.replayed:
            headers["Idempotent-Replayed"] = "true"
        note_outcome("replayed" if vended.replayed else "charged")
        return json_response(body, headers=headers)
