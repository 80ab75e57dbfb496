"""The access log's batching (issue 20 item 9): lines wait for one `write`, none is lost.

A `write` per event-loop turn to a log file cost a vend ~1 % of its CPU under the bench's
load, so lines are held up to `FLUSH_SECONDS` (or until `FLUSH_LINES` wait).  What must hold
beside the saving: every line is written, in order, as one line each, and the lines of the
last requests are written when the server stops.
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from litestar.testing import TestClient

from engine import Settings, create_app
from engine.observability.logs import FLUSH_LINES, AccessLog


class _Stream(io.StringIO):
    """A log stream that says when something was written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)


async def test_lines_wait_for_one_write_and_arrive_in_order() -> None:
    stream = _Stream()
    log = AccessLog(json_lines=True, stream=stream)
    for i in range(3):
        log.write(log.line("POST", "/v1/vend-token", 200, 1.5, f"u{i}", f"r{i}"))
    await asyncio.sleep(0)  # a loop turn alone writes nothing
    assert not stream.written.is_set()
    # The timer writes them, without any explicit flush.
    await asyncio.wait_for(stream.written.wait(), timeout=10)
    written = [json.loads(line) for line in stream.getvalue().splitlines()]
    users = [(e["userId"], e["requestId"]) for e in written]
    assert users == [("u0", "r0"), ("u1", "r1"), ("u2", "r2")]


async def test_a_full_batch_is_written_at_once() -> None:
    stream = io.StringIO()
    log = AccessLog(json_lines=False, stream=stream)
    for i in range(FLUSH_LINES):
        log.write(f"line {i}")
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(FLUSH_LINES)]
    log.flush()  # nothing left: no empty line
    assert stream.getvalue().count("\n") == FLUSH_LINES


@pytest.mark.server
def test_the_last_requests_lines_are_written_when_the_app_stops(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with TestClient(create_app(settings.with_overrides(access_log=True))) as client:
        request_id = client.get("/health").headers["x-request-id"]
    assert f"request_id={request_id}" in capsys.readouterr().err
