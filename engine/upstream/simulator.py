"""A TTTranscribe simulator that follows the upstream contract, with faults on request.

Contract (see the upstream reference): `POST /transcribe` → 202 with `id`, `requestId`,
`request_id`, `statusPollUrl`, `status:"queued"`, `submittedAt`, `estimatedProcessingTime`,
`url`; `GET /status/{id}` → progress 15, 35, 75 then 100 (`completed`, with
`result.transcription`) or `failed` with a string `error`; 404 `job_not_found` for unknown ids;
401 without `X-Engine-Auth`; plain-text 404 for unknown routes.  Progress advances one phase
per poll, so tests are deterministic without waiting on a clock.

Control routes (authenticated like the rest): `POST /__faults` sets faults, `DELETE /__faults`
clears them, `POST /__restart` forgets every job, `GET /__stats` counts what was received.

It also serves TikTok-like pages at `/{host}/{path}` for the metadata fetcher in dev mode and
tests: `@huge` is oversized, `@slow` hangs, `@missing` is 404, `@broken` is 500, and the short
links `vm.tiktok.com/EVIL` and `/LOOP` redirect out of the allow-list and in a circle.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec
import uvicorn

from engine.timeutil import iso

Scope = dict[str, Any]
_VIDEO = re.compile(r"^https?://(www\.)?tiktok\.com/@[\w.-]+/video/\d+")
_SHORT = re.compile(r"^https?://(vm|vt)\.tiktok\.com/\w+")
_PHASES = (
    ("processing", 15, "audio_extraction"),
    ("processing", 35, "transcription"),
    ("processing", 75, "summarization"),
    ("completed", 100, "completed"),
)
TRANSCRIPT = "this is a simulated transcription of a tiktok video about credits"


@dataclass
class Faults:
    latency_ms: int = 0
    error_rate: float = 0.0
    error_status: int = 500
    html_errors: bool = False
    hang: bool = False
    malformed: bool = False
    reset: bool = False
    rate_limited: bool = False
    routes: str = "all"  # "transcribe", "status" or "all"


@dataclass
class Stats:
    transcribe_calls: int = 0
    jobs_created: int = 0
    status_calls: int = 0
    meta_fetches: int = 0
    unauthorized: int = 0
    paths: list[str] = field(default_factory=list)
    last_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Job:
    id: str
    url: str
    submitted_at: str
    polls: int = 0
    fails: bool = False


class Simulator:
    """The ASGI app; one instance holds the jobs, faults and counters."""

    def __init__(self, secret: str, seed: int = 0) -> None:
        self.secret = secret
        self.jobs: dict[str, Job] = {}
        self.faults = Faults()
        self.stats = Stats()
        self._random = random.Random(seed)
        self.base_url = ""

    # -- ASGI plumbing -------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, payload, extra = await self._route(scope["method"], scope["path"], headers, body)
        if status < 0:  # connection reset: promise a body, send half, then drop the socket
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"1000")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"id":', "more_body": True})
            raise ConnectionResetError("simulated reset")
        if isinstance(payload, bytes):
            raw, kind = payload, extra.pop("content-type", "application/json")
        else:
            raw, kind = msgspec.json.encode(payload), "application/json"
        out = [(b"content-type", kind.encode())] + [
            (k.encode(), v.encode()) for k, v in extra.items()
        ]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": raw})

    def _authorised(self, headers: dict[str, str]) -> bool:
        return hmac.compare_digest(headers.get("x-engine-auth", "").encode(), self.secret.encode())

    async def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        self.stats.paths.append(f"{method} {path}")
        if path == "/health" and method == "GET":
            return 200, {"status": "healthy", "service": "tttranscribe", "version": "sim"}, {}
        if path.split("/")[1:2] and path.split("/")[1].endswith("tiktok.com") and method == "GET":
            return await self._page(path)
        if not self._authorised(headers):
            self.stats.unauthorized += 1
            return (
                401,
                {
                    "error": "unauthorized",
                    "message": "Missing or invalid X-Engine-Auth header",
                    "details": {"provided": "present" if "x-engine-auth" in headers else "missing"},
                },
                {},
            )
        self.stats.last_headers = {k: v for k, v in headers.items() if k != "x-engine-auth"}
        if path == "/__faults":
            return self._set_faults(method, body)
        if path == "/__restart" and method == "POST":
            self.jobs.clear()
            return 200, {"restarted": True}, {}
        if path == "/__stats" and method == "GET":
            return 200, asdict(self.stats), {}
        if path == "/transcribe" and method == "POST":
            self.stats.transcribe_calls += 1
            return await self._faulty("transcribe") or self._submit(body)
        if path.startswith("/status/") and method == "GET":
            self.stats.status_calls += 1
            return await self._faulty("status") or self._status(path[len("/status/") :])
        return 404, b"404 Not Found", {"content-type": "text/plain"}

    def _set_faults(self, method: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if method == "DELETE":
            self.faults = Faults()
        elif method == "POST":
            try:
                self.faults = msgspec.json.decode(body, type=Faults)
            except msgspec.MsgspecError as exc:
                return 400, {"error": "invalid_request", "message": str(exc)}, {}
        return 200, asdict(self.faults), {}

    async def _faulty(self, route: str) -> tuple[int, Any, dict[str, str]] | None:
        faults = self.faults
        if faults.routes not in ("all", route):
            return None
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.hang:
            await asyncio.sleep(3600)
        if faults.reset:
            return -1, None, {}
        if faults.rate_limited:
            return (
                429,
                {
                    "error": "rate_limited",
                    "message": "Too many requests. Please wait before retrying.",
                    "details": {"retryAfter": 60},
                },
                {},
            )
        if faults.error_rate and self._random.random() < faults.error_rate:
            if faults.html_errors:
                return (
                    faults.error_status,
                    b"<html><body>Bad gateway</body></html>",
                    {"content-type": "text/html"},
                )
            return (
                faults.error_status,
                {
                    "error": "processing_failed",
                    "message": "Failed to start transcription job",
                    "details": {"reason": "internal_error"},
                },
                {},
            )
        if faults.malformed:
            return 200, b"{not json", {}
        return None

    # -- the contract --------------------------------------------------------------------
    def _submit(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        try:
            request = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return (
                400,
                {
                    "error": "invalid_request",
                    "message": "Invalid JSON in request body",
                    "details": {"reason": "malformed_json"},
                },
                {},
            )
        url = request.get("url") if isinstance(request, dict) else None
        if not isinstance(url, str) or not (_VIDEO.match(url.strip()) or _SHORT.match(url.strip())):
            return (
                400,
                {
                    "error": "invalid_url",
                    "message": "URL must be a valid TikTok video URL",
                    "details": {
                        "providedUrl": str(url) if url is not None else "undefined",
                        "expectedFormat": "https://www.tiktok.com/@username/video/1234567890",
                    },
                },
                {},
            )
        url = url.strip()
        job = Job(str(uuid.uuid4()), url, iso(time.time()), fails="/@fail" in url)
        self.jobs[job.id] = job
        self.stats.jobs_created += 1
        return (
            202,
            {
                "id": job.id,
                "requestId": job.id,
                "request_id": job.id,
                "statusPollUrl": f"{self.base_url}/status/{job.id}",
                "status": "queued",
                "submittedAt": job.submitted_at,
                "estimatedProcessingTime": 300,
                "url": url,
            },
            {},
        )

    def _status(self, job_id: str) -> tuple[int, Any, dict[str, str]]:
        job = self.jobs.get(job_id)
        if job is None:
            return (
                404,
                {
                    "error": "job_not_found",
                    "message": "Transcription job not found",
                    "details": {"jobId": job_id},
                },
                {},
            )
        job.polls += 1
        status, progress, step = _PHASES[min(job.polls, len(_PHASES)) - 1]
        body: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "progress": progress,
            "submittedAt": job.submitted_at,
            "currentStep": step,
        }
        if job.fails and job.polls >= 3:
            error = "Transcription error: simulated failure"
            body.update(
                status="failed", progress=0, currentStep="failed", error=error, message=error
            )
        elif status == "completed":
            body.update(
                completedAt=iso(time.time()),
                result={
                    "transcription": TRANSCRIPT,
                    "confidence": 0.95,
                    "language": "en",
                    "duration": 12.5,
                    "wordCount": len(TRANSCRIPT.split()),
                    "speakerCount": 1,
                    "audioQuality": "high",
                    "processingTime": 1,
                },
                metadata={
                    "url": job.url,
                    "title": "TikTok Video",
                    "author": "unknown",
                    "description": "Transcribed TikTok video",
                },
                cacheHit=False,
            )
        body.update(
            statusUrl=f"{self.base_url}/status/{job.id}", pollIntervalSeconds=3, request_id=job.id
        )
        return 200, body, {}

    # -- TikTok stand-in -----------------------------------------------------------------
    async def _page(self, path: str) -> tuple[int, Any, dict[str, str]]:
        self.stats.meta_fetches += 1
        host, _, rest = path[1:].partition("/")
        html = {"content-type": "text/html; charset=utf-8"}
        if host in ("vm.tiktok.com", "vt.tiktok.com"):
            code = rest.strip("/")
            if code == "EVIL":
                return 302, b"", {"location": "http://127.0.0.1:9/internal"}
            if code == "LOOP":
                return 302, b"", {"location": f"https://{host}/LOOP/"}
            digits = str(int.from_bytes(code.encode()[:6].ljust(6, b"0"), "big"))
            return 301, b"", {"location": f"https://www.tiktok.com/@sim/video/{digits}"}
        match = re.match(r"^@([\w.-]+)/video/(\d+)", rest)
        if not match:
            return 404, b"not found", html
        user, video = match.groups()
        if user == "missing":
            return 404, b"<html>gone</html>", html
        if user == "broken":
            return 500, b"<html>error</html>", html
        if user == "slow":
            await asyncio.sleep(3600)
        if user == "huge":
            return 200, b"<html>" + b"x" * (3 * 1024 * 1024) + b"</html>", html
        page = (
            f"<html><head><title>Video {video} by @{user} | TikTok</title>"
            f'<meta property="og:title" content="Video {video} by @{user}"/>'
            f'<meta property="og:description" content="A simulated clip about credits #pluct"/>'
            f'</head><body><script>{{"author":"{user.title()} Sim","uniqueId":"{user}",'
            f'"duration":37}}</script></body></html>'
        )
        return 200, page.encode(), html


def _bound_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def run_simulator(host: str, port: int, secret: str) -> None:
    """Serve in the foreground (`pluct-engine simulator`)."""
    app = Simulator(secret)
    app.base_url = f"http://{host}:{port}"
    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="off")


class BackgroundSimulator:
    """The simulator on a free loopback port in a daemon thread (dev mode, tests, notebooks)."""

    def __init__(self, secret: str, host: str = "127.0.0.1") -> None:
        self.app = Simulator(secret)
        self._sock = _bound_socket(host, 0)
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        self.app.base_url = self.url
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name="ttt-simulator",
        )

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> BackgroundSimulator:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def start_background_simulator(secret: str) -> str:
    return BackgroundSimulator(secret).start().url
