"""The request being served, as every layer below the access-log middleware sees it.

The middleware puts one `RequestInfo` in a context variable; code that learns something the
access line or the metrics report (who the caller is, how a vend ended, the error code) writes
it there, and the error envelope, the audit entry and every log line read the request id from
it.  Reading a context variable costs tens of nanoseconds, so the hot path can afford it.
"""

from __future__ import annotations

import itertools
import os
import re
from contextvars import ContextVar

# What an incoming `X-Request-Id` must look like to be kept (issue 20): anything else, which
# might carry a newline or a secret into a log line, is replaced by a fresh id.
_INCOMING = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestInfo:
    """Mutable on purpose: a context variable set in the middleware is visible below it, but
    values set below would not travel back up, so callees fill in this object instead."""

    __slots__ = ("error_code", "outcome", "request_id", "user_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.user_id = ""
        self.outcome = ""
        self.error_code = ""


_current: ContextVar[RequestInfo | None] = ContextVar("pluct_request", default=None)


# A request id must be unique, not secret: 16 random hex digits drawn once per process (a
# forked child draws its own) and a 16-digit counter.  `os.urandom` per request is a system
# call, which on this VM cost more than the rest of the middleware.
_prefix = os.urandom(8).hex()
_counter = itertools.count()


def new_request_id() -> str:
    return _prefix + format(next(_counter), "016x")


def _reseed() -> None:
    global _prefix, _counter
    _prefix, _counter = os.urandom(8).hex(), itertools.count()


os.register_at_fork(after_in_child=_reseed)


def request_id_from(incoming: bytes | None) -> str:
    """Keep a caller's id only when it matches `^[A-Za-z0-9._-]{1,64}$` exactly."""
    if incoming is not None:
        text = incoming.decode("latin-1")
        if _INCOMING.fullmatch(text):
            return text
    return new_request_id()


def begin(request_id: str) -> RequestInfo:
    info = RequestInfo(request_id)
    _current.set(info)
    return info


def current() -> RequestInfo | None:
    return _current.get()


def current_request_id() -> str:
    """The id of the request being served; a fresh one outside any request (a test client
    without the middleware, a background task)."""
    info = _current.get()
    return info.request_id if info is not None else new_request_id()


def note_user(user_id: str) -> None:
    info = _current.get()
    if info is not None:
        info.user_id = user_id


def note_outcome(outcome: str) -> None:
    info = _current.get()
    if info is not None:
        info.outcome = outcome


def note_error(code: str) -> None:
    info = _current.get()
    if info is not None:
        info.error_code = code
