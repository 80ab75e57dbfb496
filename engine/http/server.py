"""The HTTP server `pluct-engine serve` runs: uvicorn with httptools, plus the limits it lacks.

uvicorn's httptools protocol has no bound on request headers (a 10.6 MB header was answered
200 and grew the process by 250 MiB) and no deadline for reading a request (a client sending
one byte a second held its connection forever).  `GuardedHttpToolsProtocol` adds both at the
cheapest place, the bytes arriving on the connection:

* header bytes: counted from the end of one request until the next one's headers are
  complete; past `ENGINE_MAX_HEADER_BYTES` (16 KiB) the connection gets `431` in the error
  envelope and is closed, so at most one read buffer more is ever held.
* read deadline: a request must arrive whole (headers and body) within
  `ENGINE_READ_TIMEOUT_SECONDS` (10 s) of its first byte, or of the connection opening;
  otherwise `408` and close.  Idle keep-alive connections close after
  `ENGINE_KEEPALIVE_SECONDS` (5 s, uvicorn's own timer).

uvicorn's h11 protocol could bound headers (`h11_max_incomplete_event_size`) but has no read
deadline either, and parses in Python; the httptools parser stays, with one counter added.
Bodies are bounded by the app (`read_body`, 413 past 64 KiB).
"""

from __future__ import annotations

import asyncio
import os
import sys
from functools import cache
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from engine.config import ConfigError, Settings, sqlite_path
from engine.store.sqlite_check import check_engine_file

PROTOCOL = "engine.http.server:GuardedHttpToolsProtocol"


class ServerLimits(msgspec.Struct, frozen=True):
    max_header_bytes: int
    read_timeout_seconds: float
    keepalive_seconds: float


def limits_of(settings: Settings) -> ServerLimits:
    return ServerLimits(
        settings.max_header_bytes,
        float(settings.read_timeout_seconds),
        float(settings.keepalive_seconds),
    )


@cache
def _process_limits() -> ServerLimits:
    """Read in each worker process, from the environment the parent validated at start-up."""
    return limits_of(Settings.from_env())


def _error(status: int, reason: str, code: str, message: str, details: dict[str, Any]) -> bytes:
    body = msgspec.json.encode(
        {
            "ok": False,
            "code": code,
            "message": message,
            "details": details,
            "guidance": "Send the whole request promptly, with headers under the limit",
            "requestId": "req_" + os.urandom(16).hex(),
        }
    )
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose headers are too large."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header-size bound and a request-read deadline.

    Per request it only stores a deadline and counts bytes: one timer per connection checks
    the deadline and re-arms itself while requests keep arriving (a timer created and
    cancelled per request cost a vend-sized request ~20 % more protocol time).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = _process_limits()
        self._header_bytes = 0
        self._in_headers = True
        self._reading = False  # a request has begun and has not arrived whole yet
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._oversized = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_reading()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._reading:
            self._start_reading()
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if (
            self._in_headers
            and self._header_bytes > self._limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse_headers()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, which is how `on_headers_complete` stops one."""
        if self._oversized:
            self._refuse_headers()
        else:
            super().send_400_response(msg)

    def _refuse_headers(self) -> None:
        limit = self._limits.max_header_bytes
        self._refuse(
            _error(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                f"Request line and headers exceed {limit} bytes",
                {"maxHeaderBytes": limit},
            )
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._reading:  # begun inside the chunk that ended the previous one
            self._start_reading()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        # Headers that arrived within one read are counted here, once parsed, exactly; only
        # needed when more bytes than the limit came in while they were read.
        if self._header_bytes > self._limits.max_header_bytes:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > self._limits.max_header_bytes:
                self._oversized = True
                raise _HeadersTooLarge  # httptools stops; uvicorn calls send_400_response
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading = False  # read whole: from here the app and keep-alive take over
        self._in_headers = True
        self._header_bytes = 0

    def _start_reading(self) -> None:
        self._reading = True
        self._deadline = self.loop.time() + self._limits.read_timeout_seconds
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self.transport.is_closing() or not self._reading:
            return  # nothing being read: the next request's first byte arms the timer again
        if self.loop.time() < self._deadline:  # a later request: its own deadline
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # a response is under way: no second status line
            return
        seconds = self._limits.read_timeout_seconds
        self._refuse(
            _error(
                408,
                "Request Timeout",
                "request_timeout",
                f"The request did not arrive whole within {seconds:g} s",
                {"readTimeoutSeconds": seconds},
            )
        )

    def _refuse(self, response: bytes) -> None:
        self._reading = False
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        self.transport.write(response)
        self.transport.close()


def preflight(settings: Settings) -> None:
    """Checks that must pass before any worker starts; ConfigError (one line) otherwise."""
    if settings.store_url.startswith("sqlite:"):
        check_engine_file(sqlite_path(settings.store_url))


def serve(settings: Settings, *, host: str, port: int, workers: int, log_level: str) -> int:
    """Run the engine's server; 2 (with one line on stderr) if the store file is refused."""
    import uvicorn

    try:
        preflight(settings)
    except ConfigError as exc:
        print(f"pluct-engine: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        "engine.http.app:create_server_app",
        factory=True,
        host=host,
        port=port,
        workers=workers if workers > 1 else None,
        log_level=log_level,
        **uvicorn_options(settings),
    )
    return 0


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments `uvicorn.run` gets for the engine, besides host, port, workers."""
    limits = limits_of(settings)
    return {
        "http": PROTOCOL,
        "timeout_keep_alive": limits.keepalive_seconds,
        # Also bounds headers should the h11 protocol be chosen instead.
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        "access_log": False,
        "timeout_graceful_shutdown": 5,
    }
