"""Log lines: the access line of each request, and every other line the engine writes.

Two formats, chosen by `LOG_FORMAT`: `json` (one object per line, for a log shipper) and
`human` (the default).  Both hold user-supplied values only as escaped fields: a `%0A` in a
user id or a URL can never start a new line (issue 17).  Every line written while a request
is served carries its request id.

The access line does not go through `logging`: building a `LogRecord`, taking the handler's
lock and one `write` per line cost a vend several per cent of its time.  Lines are formatted
directly and written together at most every `FLUSH_SECONDS` (sooner when `FLUSH_LINES` are
waiting): a `write` per event-loop turn, to a file, was ~1 % of a vend's CPU under load.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from typing import Any, TextIO

import msgspec

from engine.observability.context import current
from engine.timeutil import iso

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_encode = msgspec.json.encode


def escape(text: str) -> str:
    """`text` with every control character spelt as a JSON escape, so it stays on one line."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: _encode(m.group())[1:-1].decode(), text)


def quoted(text: str) -> str:
    """A user-supplied value as a JSON string: quoted and escaped."""
    return _encode(text).decode()


class EngineFormatter(logging.Formatter):
    """Formats the engine's `logging` lines (not the access line) in either format."""

    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self._json = json_lines

    def format(self, record: logging.LogRecord) -> str:
        info = current()
        message = record.getMessage()
        trace = self.formatException(record.exc_info) if record.exc_info else ""
        if self._json:
            fields: dict[str, Any] = {
                "ts": iso(record.created),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": message,
            }
            if info is not None:
                fields["requestId"] = info.request_id
            if trace:
                fields["exc"] = trace
            return _encode(fields).decode()
        line = f"{iso(record.created)} {record.levelname} {record.name} {escape(message)}"
        if info is not None:
            line += f" request_id={info.request_id}"
        if trace:
            line += " exc=" + quoted(trace)
        return line


def configure_logging(json_lines: bool, level: str = "INFO") -> None:
    """One stderr handler on the `engine` logger, in the configured format."""
    logger = logging.getLogger("engine")
    for handler in list(logger.handlers):
        if getattr(handler, "pluct_engine", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EngineFormatter(json_lines))
    handler.pluct_engine = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


# How late an access line may reach the log, and how many may wait (a bound on memory).
FLUSH_SECONDS = 0.05
FLUSH_LINES = 512
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
# What needs no escaping inside a JSON string or a quoted human field.
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@|+-/{}")


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def _plain(text: str) -> bool:
    return _PLAIN.issuperset(text)


class AccessLog:
    """Formats one line per request and writes the lines of one loop turn together.

    Formatted by hand rather than through `msgspec` or `logging`: every field is either the
    engine's own (route template, status, duration, a request id that matched its pattern) or
    checked against a plain alphabet and escaped when it is not, and this is the one line
    every request pays for.
    """

    def __init__(self, json_lines: bool, stream: TextIO | None = None) -> None:
        self._json = json_lines
        self._stream = stream
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def _now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:  # formatted once a second
            self._second, self._stamp = second, iso(second)[:-5]
        return self._stamp + _MILLIS[int((now - second) * 1000)]

    def line(
        self,
        method: str,
        route: str,
        status: int,
        duration_ms: float,
        user_id: str,
        request_id: str,
    ) -> str:
        """`route` is the route template (never the raw path, which is user text), the request
        id matched `[A-Za-z0-9._-]` or was made here; the method and user id are escaped
        unless plain."""
        shown_method = method if method in _METHODS else quoted(method)
        # One f-string per line: a single allocation, where `+` made one per part.
        if self._json:
            if shown_method is method:
                shown_method = f'"{method}"'
            user = ""
            if user_id:
                user = (
                    f',"userId":"{user_id}"' if _plain(user_id) else ',"userId":' + quoted(user_id)
                )
            # Milliseconds to 3 places from integer microseconds: formatting a float with
            # a precision cost more than the rest of the line.
            micros = int(duration_ms * 1000)
            return (
                f'{{"ts":"{self._now()}","level":"info","logger":"engine.access",'
                f'"method":{shown_method},"route":"{route}","status":{status},'
                f'"durationMs":{micros // 1000}.{micros % 1000:03d},'
                f'"requestId":"{request_id}"{user}}}'
            )
        user = ""
        if user_id:
            user = f' user_id="{user_id}"' if _plain(user_id) else " user_id=" + quoted(user_id)
        return (
            f"{self._now()} INFO engine.access {shown_method} {route} {status} "
            f"{duration_ms:.1f}ms request_id={request_id}{user}"
        )

    def write(self, line: str) -> None:
        self._pending.append(line)
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop: write at once
                self.flush()
        elif len(self._pending) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        """Write every waiting line (also at shutdown, so none is left behind)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        stream = self._stream or sys.stderr
        stream.write("\n".join(lines) + "\n")
        stream.flush()
