"""`/ttt/*`: submit a paid transcription and poll it (`status`, or `poll` as the latest app
calls it)."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.types import ASGIApp

from engine.domain.idempotency import client_key
from engine.errors import EITHER_AUTH, VENDED_AUTH, Unauthorized
from engine.http.bodies import TranscribeRequest
from engine.http.dependencies import AnyRequest, bearer_token, decode_body, header
from engine.http.responses import PreparedJSON
from engine.observability.context import note_user
from engine.services import Services


class TranscriptionController(Controller):
    path = "/ttt"

    @post("/transcribe", status_code=202)
    async def transcribe(self, request: AnyRequest, services: NamedDependency[Services]) -> ASGIApp:
        try:
            return await self._transcribe(request, services)
        except Unauthorized as exc:  # every 401 here is about the vended token
            exc.guidance_text = VENDED_AUTH
            raise

    async def _transcribe(self, request: AnyRequest, services: Services) -> ASGIApp:
        token = bearer_token(request, VENDED_AUTH)
        if not services.tokens.is_vended(token):
            raise Unauthorized(
                "A vended token from POST /v1/vend-token is required; user tokens cannot"
                " transcribe",
                code="vended_token_required",
            )
        principal = services.tokens.verify_vended(token)
        note_user(principal.user_id)
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
    try:
        principal = services.tokens.verify_either(bearer_token(request, EITHER_AUTH))
    except Unauthorized as exc:
        exc.guidance_text = EITHER_AUTH
        raise
    note_user(principal.user_id)
    reply = await services.transcription.status(principal, job_id)
    return PreparedJSON(reply.body, reply.status_code, reply.rate.headers() if reply.rate else None)
