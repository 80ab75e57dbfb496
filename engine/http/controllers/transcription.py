"""`/ttt/*`: submit a paid transcription and poll it (`status`, or `poll` as the latest app
calls it)."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.types import ASGIApp

from engine.domain.idempotency import client_key
from engine.errors import Unauthorized
from engine.http.bodies import TranscribeRequest
from engine.http.dependencies import AnyRequest, bearer_token, decode_body, header
from engine.http.responses import PreparedJSON
from engine.services import Services


class TranscriptionController(Controller):
    path = "/ttt"

    @post("/transcribe", status_code=202)
    async def transcribe(self, request: AnyRequest, services: NamedDependency[Services]) -> ASGIApp:
        token = bearer_token(request)
        if not services.tokens.is_vended(token):
            raise Unauthorized(
                "A vended token from POST /v1/vend-token is required; user tokens cannot"
                " transcribe",
                code="vended_token_required",
            )
        principal = services.tokens.verify_vended(token)
        data = await decode_body(request, TranscribeRequest)
        key = client_key(data.client_request_id, header(request, b"x-client-request-id"))
        reply = await services.transcription.submit(principal, data.url, key)
        headers = reply.rate.headers() if reply.rate else {}
        if reply.replayed:
            headers["Idempotent-Replayed"] = "true"
        return PreparedJSON(reply.body, reply.status_code, headers)

    @get("/status/{job_id:str}")
    async def status(
        self, request: AnyRequest, job_id: FromPath[str], services: NamedDependency[Services]
    ) -> ASGIApp:
        """Takes the vended token or the user's own token: polling outlives the 15 minutes."""
        return await _job_status(request, job_id, services)

    @get("/poll/{job_id:str}")
    async def poll(
        self, request: AnyRequest, job_id: FromPath[str], services: NamedDependency[Services]
    ) -> ASGIApp:
        """The latest app polls here with its long-lived user token: the same as status."""
        return await _job_status(request, job_id, services)


async def _job_status(request: AnyRequest, job_id: str, services: Services) -> ASGIApp:
    principal = services.tokens.verify_either(bearer_token(request))
    reply = await services.transcription.status(principal, job_id)
    return PreparedJSON(reply.body, reply.status_code, reply.rate.headers() if reply.rate else None)
