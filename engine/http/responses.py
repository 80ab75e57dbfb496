"""JSON responses as finished bytes.

A `PreparedJSON` is already an ASGI app, which Litestar passes through untouched; a Litestar
`Response` would be converted into one on every request, a measurable share of a cheap route's
cost (see the README's Benchmarks).  Error envelopes end up here too: the exception handler
returns a `Response`, as Litestar requires, whose ASGI form is a `PreparedJSON`.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from litestar.types import Receive, Scope, Send

_JSON = (b"content-type", b"application/json")


def json_response(
    body: msgspec.Struct, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> PreparedJSON:
    return PreparedJSON(msgspec.json.encode(body), status_code, headers)


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
