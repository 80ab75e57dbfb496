"""Responses as finished bytes.

`json_response` is what most routes return: a Litestar `Response` that the framework turns into
ASGI messages.  `PreparedJSON` is already an ASGI app, which Litestar passes through untouched;
the vend route uses it because it is the hottest route and the conversion is a measurable
share of its cost (see the README's Benchmarks).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from litestar import Response
from litestar.types import Receive, Scope, Send

_JSON = (b"content-type", b"application/json")


def json_response(
    body: msgspec.Struct, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response[bytes]:
    return Response(
        msgspec.json.encode(body),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


class PreparedJSON:
    """A JSON body and its headers, sent as two ASGI messages."""

    __slots__ = ("_body", "_headers", "_status")

    def __init__(
        self, body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        self._body = body
        self._status = status
        self._headers = [
            _JSON,
            (b"content-length", str(len(body)).encode()),
            *(
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in (headers or {}).items()
            ),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self._status, "headers": self._headers}
        )
        await send({"type": "http.response.body", "body": self._body, "more_body": False})
