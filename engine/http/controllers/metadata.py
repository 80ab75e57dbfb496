"""`GET /meta?url=`: TikTok metadata, unauthenticated as in the seed, limited per client IP."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.types import ASGIApp

from engine.domain.ratelimit import ip_subject
from engine.domain.urls import normalise_tiktok_url
from engine.errors import InvalidUrl, UnprocessableUrl
from engine.http.dependencies import AnyRequest, context_of
from engine.http.responses import json_response
from engine.services import Services


class MetadataController(Controller):
    path = "/meta"

    @get("/")
    async def metadata(self, request: AnyRequest, services: NamedDependency[Services]) -> ASGIApp:
        url = request.query_params.get("url")
        if not url:
            raise UnprocessableUrl("url query parameter is required", details={"parameter": "url"})
        # A refused URL never reaches the network, so it is refused before it is counted:
        # a client fixing its input is not also told to slow down.  422, as the original
        # Worker answers (its CLI checks for it); /ttt/transcribe keeps 400.
        try:
            url = normalise_tiktok_url(url)
        except InvalidUrl as exc:
            raise UnprocessableUrl(details=exc.details) from None
        rate = await services.limiter.hit(ip_subject(context_of(request).ip), services.clock())
        meta = await services.metadata.resolve(url)
        return json_response(meta, headers=rate.headers() if rate else None)
