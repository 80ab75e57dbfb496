"""The server `pluct-engine serve` runs, attacked over raw sockets: header bounds and deadlines.

One real engine process (SQLite, one worker, so its pid is the process serving) with a short
read deadline so the slow-client tests finish in seconds; the defaults are checked apart.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import Settings
from engine.http.server import PROTOCOL, uvicorn_options
from engine.local import LocalEngine
from tests.conftest import ADMIN_KEY, JWT_SECRET, TTT_SECRET

READ_TIMEOUT = 2  # seconds, for the engine under test; the default is 10
SLOW_CLIENT_BOUND = 25.0  # seconds a slow client may keep sending before the test gives up


@pytest.fixture(scope="module")
def engine() -> Iterator[LocalEngine]:
    with LocalEngine(env={"ENGINE_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT)}) as running:
        yield running


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _connect(engine: LocalEngine) -> socket.socket:
    return socket.create_connection(("127.0.0.1", engine.port), timeout=10)


def _send_until_answered(sock: socket.socket, data: bytes, chunk: int = 8192) -> bytes:
    """Send `data` in chunks, reading whatever the server answers meanwhile; the answer."""
    received = b""
    for start in range(0, len(data), chunk):
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        try:
            sock.sendall(data[start : start + chunk])
        except (BrokenPipeError, ConnectionResetError):
            break
    try:
        while part := sock.recv(65536):
            received += part
    except (ConnectionResetError, TimeoutError):
        pass
    return received


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def test_a_1_mib_header_is_431_and_memory_stays_flat(engine: LocalEngine) -> None:
    before = _rss_kib(engine.pid)
    for _ in range(5):
        with _connect(engine) as sock:
            request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
            answer = _send_until_answered(sock, request)
        assert _status(answer) == 431, answer[:200]
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["ok"] is False and body["code"] == "headers_too_large"
        assert body["details"]["maxHeaderBytes"] == 16384
    assert _rss_kib(engine.pid) - before < 20 * 1024
    assert engine.client.get("/health").status_code == 200


def test_many_headers_adding_up_past_16_kib_are_431(engine: LocalEngine) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(200))
    with _connect(engine) as sock:
        answer = _send_until_answered(
            sock, b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        )
    assert _status(answer) == 431


def test_headers_under_the_limit_and_a_64_kib_body_still_pass(engine: LocalEngine) -> None:
    big_but_legal = {"X-Pad": "c" * 12000}
    assert engine.client.get("/health", headers=big_but_legal).status_code == 200
    body = {"userId": "ann", "amount": 1, "reason": "r" * 400, "pad": "p" * (60 * 1024)}
    response = engine.client.post(
        "/v1/credits/add", json=body, headers={**engine.admin_headers, **big_but_legal}
    )
    assert response.status_code in {200, 400}, response.text  # read whole, not cut short
    too_big = {**body, "pad": "p" * (65 * 1024)}
    refused = engine.client.post("/v1/credits/add", json=too_big, headers=engine.admin_headers)
    assert (refused.status_code, refused.json()["code"]) == (413, "payload_too_large")


def _closed_while_trickling(sock: socket.socket, data: bytes) -> tuple[bool, bytes]:
    """Send one byte at a time, 4 a second, until the server closes or the bound passes."""
    deadline = time.monotonic() + SLOW_CLIENT_BOUND
    index = 0
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            try:
                return True, sock.recv(65536)
            except ConnectionResetError:
                return True, b""
        try:
            sock.sendall(data[index % len(data) : index % len(data) + 1])
        except (BrokenPipeError, ConnectionResetError):
            return True, b""
        index += 1
    return False, b""


def test_a_slowloris_header_is_closed_with_408(engine: LocalEngine) -> None:
    with _connect(engine) as sock:
        closed, answer = _closed_while_trickling(sock, b"GET /health HTTP/1.1\r\nX-Slow: aaaaaaaa")
    assert closed, "a client sending a byte every 0.25 s kept its connection"
    assert _status(answer) == 408
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "request_timeout"


def test_a_slow_body_is_closed_too(engine: LocalEngine) -> None:
    head = (
        b"POST /v1/credits/add HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-API-Key: " + ADMIN_KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n"
    )
    with _connect(engine) as sock:
        sock.sendall(head)
        closed, _ = _closed_while_trickling(sock, b"{")
    assert closed


def test_an_idle_connection_is_closed(engine: LocalEngine) -> None:
    with _connect(engine) as sock:
        sock.settimeout(SLOW_CLIENT_BOUND)
        answer = sock.recv(65536)
        assert _status(answer) == 408 and sock.recv(65536) == b""


def test_keep_alive_connections_serve_many_requests(engine: LocalEngine) -> None:
    with _connect(engine) as sock:
        for _ in range(5):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _status(_one_response(sock)) == 200


def _one_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body), however the reads split it."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        assert part, "connection closed mid-response"
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        part = sock.recv(65536)
        assert part, "connection closed mid-body"
        body += part
    assert len(body) == length  # nothing of a next response read ahead
    return head + b"\r\n\r\n" + body


def test_the_defaults() -> None:
    settings = Settings.from_env(
        {
            "ENGINE_JWT_SECRET": JWT_SECRET,
            "ENGINE_ADMIN_KEY": ADMIN_KEY,
            "TTT_SHARED_SECRET": TTT_SECRET,
        }
    )
    assert (settings.max_header_bytes, settings.read_timeout_seconds) == (16384, 10)
    assert settings.keepalive_seconds == 5 and settings.max_body_bytes == 65536
    options = uvicorn_options(settings)
    assert options["http"] == PROTOCOL
    assert options["timeout_keep_alive"] == 5
    assert options["h11_max_incomplete_event_size"] == 16384
