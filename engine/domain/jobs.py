"""What a job's bodies say: ours, built from upstream's, never upstream's merged over ours.

Upstream's ids and addresses (`id`, `statusUrl`, `statusPollUrl`, `server`, ...) are internal:
they name another service, so they are dropped.  The engine's `jobId`, `statusUrl` and
`pollUrl` name the engine's routes; `updatedAt` is when the engine last saw the job change
(its status or progress), and a failed job says `creditsRefunded`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from engine.store.records import JobRecord
from engine.timeutil import iso

TERMINAL = ("completed", "failed")
LOST_JOB_ERROR = "upstream_lost_job"
# Upstream fields that name upstream's own ids and addresses, never forwarded.
_INTERNAL = frozenset(
    {
        "id",
        "jobId",
        "requestId",
        "request_id",
        "statusUrl",
        "statusPollUrl",
        "pollUrl",
        "webhookUrl",
        "server",
        "updatedAt",
        "creditsRefunded",
    }
)
_decode = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.encode
# A failed job's text as the app sees it: one line, bounded, with no server path (a file path
# starts a word, so the path of a URL is left alone) and never a traceback.
MAX_REASON_CHARS = 300
_SERVER_PATH = re.compile(r"(?<![\w:/\\])(?:[A-Za-z]:)?(?:[\\/][\w.~@+-]+){2,}")
_TRACEBACK_MARKS = ("Traceback (most recent call last)", 'File "')
_OURS_OR_FIXED = frozenset({"status", "url", "jobId", "statusUrl", "pollUrl"})


def upstream_id(body: dict[str, Any]) -> str:
    for key in ("id", "jobId", "requestId", "request_id"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _ours(job_id: str) -> dict[str, Any]:
    return {"jobId": job_id, "statusUrl": f"/ttt/status/{job_id}", "pollUrl": f"/ttt/poll/{job_id}"}


def _passed_through(upstream: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in upstream.items() if k not in _INTERNAL}


def submitting_body(job_id: str, url: str) -> bytes:
    """What a job says before upstream has answered (and if its record never got further)."""
    return _encode({"ok": True, **_ours(job_id), "url": url, "status": "queued", "progress": 0})


def accepted_body(upstream: dict[str, Any], job_id: str, url: str) -> bytes:
    status = upstream.get("status")
    return _encode(
        {
            **_passed_through(upstream),
            "ok": True,
            **_ours(job_id),
            "url": url,
            "status": status if isinstance(status, str) and status else "queued",
        }
    )


def upstream_reason(text: str) -> str:
    """Upstream's failure text fit for a client: a real TTTranscribe failure may name its temp
    files or carry a Python traceback, which say how upstream is built and nothing the app can
    act on."""
    if any(mark in text for mark in _TRACEBACK_MARKS):
        return "upstream_failed"
    one_line = " ".join(_SERVER_PATH.sub("<path>", text).split())
    return one_line[:MAX_REASON_CHARS] or "upstream_failed"


def _cleaned_failure(body: dict[str, Any]) -> None:
    for key, value in list(body.items()):
        if key in _OURS_OR_FIXED:
            continue
        if isinstance(value, str):
            body[key] = upstream_reason(value)
        elif isinstance(value, dict | list):
            text = _encode(value).decode()
            if any(mark in text for mark in _TRACEBACK_MARKS):
                del body[key]


def status_body(upstream: dict[str, Any], job_id: str) -> tuple[bytes, str, str]:
    """(body, status, change) of an upstream status answer; `change` is what, when it moves,
    moves `updatedAt`."""
    status = upstream.get("status")
    status = status if isinstance(status, str) and status else "processing"
    progress = upstream.get("progress")
    body = {**_passed_through(upstream), **_ours(job_id), "status": status}
    if not isinstance(progress, int) or isinstance(progress, bool):
        body["progress"] = 100 if status == "completed" else 0
    error = upstream.get("error")
    if status == "failed" and not isinstance(error, str):
        # The app reads `error` as a string; upstream's engine era sends none at all.
        message = error.get("message") if isinstance(error, dict) else None
        body["error"] = message if isinstance(message, str) else "upstream_failed"
    if status == "failed":
        _cleaned_failure(body)
    return _encode(body), status, f"{status}|{body['progress']}"


def failed_body(job_id: str, error: str) -> bytes:
    return _encode(
        {**_ours(job_id), "status": "failed", "progress": 0, "error": error, "message": error}
    )


def lost_body(job_id: str) -> bytes:
    return failed_body(job_id, LOST_JOB_ERROR)


def render(record: JobRecord) -> bytes:
    """The body a client gets: the stored one with the engine's bookkeeping fields."""
    body = _decode.decode(record.body)
    body["updatedAt"] = iso(record.updated_at)
    if record.state == "failed":
        body["creditsRefunded"] = record.credits_refunded
    return _encode(body)


def render_new(body: bytes, now: float) -> bytes:
    """An accepted body whose record could not be written (the store failed)."""
    decoded = _decode.decode(body)
    decoded["updatedAt"] = iso(now)
    return _encode(decoded)
