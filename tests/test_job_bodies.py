"""A failed job's error text reaches the app as upstream wrote it, minus what names upstream's
insides: a real TTTranscribe failure can carry a temp file's path or a Python traceback, and
the engine never forwards a stack trace or a server path to a client."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.domain.jobs import status_body


def failed(error: Any, **more: Any) -> dict[str, Any]:
    body, status, _ = status_body({"status": "failed", "error": error, **more}, "job_1")
    assert status == "failed"
    decoded: dict[str, Any] = json.loads(body)
    return decoded


@pytest.mark.parametrize(
    "text", ["Video is private", "Video unavailable: https://www.tiktok.com/@a.b/video/7301"]
)
def test_a_plain_reason_passes_through(text: str) -> None:
    assert failed(text)["error"] == text


@pytest.mark.parametrize(
    "text",
    [
        "ffmpeg failed on /tmp/tttranscribe-8f2c/audio.wav: invalid data",
        "could not open C:\\Users\\svc\\AppData\\Local\\Temp\\x.m4a",
        "yt-dlp: ERROR: unable to write /app/cache/downloads/7301.part",
    ],
)
def test_a_server_path_is_replaced(text: str) -> None:
    body = failed(text, message=text)
    for field in ("error", "message"):
        assert "tmp" not in body[field].lower() and "Users" not in body[field]
        assert "<path>" in body[field]


def test_a_traceback_is_never_forwarded() -> None:
    trace = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/worker.py", line 88, in run\n'
        "    raise RuntimeError('boom')\nRuntimeError: boom"
    )
    body = failed(trace, message=trace, detail={"trace": trace})
    assert body["error"] == body["message"] == "upstream_failed"
    assert "Traceback" not in json.dumps(body)


def test_error_text_is_one_bounded_line() -> None:
    body = failed("line one\nline two " + "x" * 5000)
    assert "\n" not in body["error"] and len(body["error"]) <= 300
