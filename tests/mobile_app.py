"""A stand-in for the Android client (mobile-client.md §2-§5.7), for end-to-end tests.

`MobileApp` mints its own Era C user JWT, sends the app's headers and bodies, polls as the
latest legacy flow does, and passes every response through `assert_app_parses_*`: the
fields and JSON types the client's kotlinx models require.  A missing, null or mistyped
required field fails the app's whole call, even on a 2xx (§4), so these checks are what
"the app can use this response" means.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

import httpx
import jwt

from tests.e2e import wait_for
from tests.spec_check import SpecRecorder

MAX_POLLS = 12  # the simulator ends a polled job within 4 polls; the app's own budget is 30


# -- what the app's models require (mobile-client.md §5), JSON types exactly -------------
class _Number:
    """A kotlin Double: a JSON integer or float literal, not a boolean."""


_STRING_FIELDS = (
    *("transcript", "text", "language", "message", "note", "url", "requestId", "request_id"),
    *("statusUrl", "statusPollUrl", "webhookUrl", "submittedAt", "completedAt", "guidance"),
    "_cachedAt",
)
STATUS_OPTIONAL: dict[str, Any] = {
    **dict.fromkeys(_STRING_FIELDS, str),
    "progress": int,
    "error": str,
    "duration": int,
    "confidence": _Number,
    "estimatedCredits": int,
    "estimatedProcessingTime": int,
    "ok": bool,
    "_cacheHit": bool,
    "_polled": bool,
    "result": dict,
    "metadata": dict,
    "build": dict,
}
RESULT_FIELDS: dict[str, Any] = {
    **dict.fromkeys(("transcription", "transcript", "text", "language", "audioQuality"), str),
    "confidence": _Number,
    "duration": _Number,
    **dict.fromkeys(("wordCount", "speakerCount", "processingTime"), int),
}
METADATA_FIELDS: dict[str, Any] = {
    "transcriptLength": int,
    "hasMetadata": bool,
    "processingTime": int,
    "cacheHit": bool,
}


def _is(value: object, kind: Any) -> bool:
    if kind is int:
        return type(value) is int  # 5.0 or true where an Int is declared fails the parse
    if kind is _Number:
        return type(value) in (int, float)
    return isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))


def _check(
    body: object, required: dict[str, Any], optional: dict[str, Any], model: str
) -> dict[str, Any]:
    assert isinstance(body, dict), f"{model}: not a JSON object: {body!r}"
    for name, kind in required.items():
        assert name in body and body[name] is not None, f"{model}: `{name}` missing: {body}"
        assert _is(body[name], kind), f"{model}: `{name}` is not {kind}: {body[name]!r}"
    for name, kind in optional.items():
        if name in body:
            assert _is(body[name], kind), f"{model}: `{name}` is not {kind}: {body[name]!r}"
    return body


def assert_app_parses_balance(body: object) -> dict[str, Any]:
    """§5.2; the UI shows `max(0, main + bonus)`, so those must carry the balance."""
    checked = _check(
        body,
        {"userId": str, "balance": int, "updatedAt": str},
        {"ok": bool, "main": int, "bonus": int, "build": dict},
        "balance",
    )
    assert checked["main"] + checked["bonus"] == checked["balance"], checked
    return checked


def assert_app_parses_vend(body: object) -> dict[str, Any]:
    """§5.3; the app uses the first non-blank of token, serviceToken, pollingToken."""
    checked = _check(
        body,
        {"token": str, "expiresIn": int, "balanceAfter": int, "requestId": str},
        {"serviceToken": str, "pollingToken": str, "ok": bool, "build": dict},
        "vend",
    )
    assert checked["token"].strip() and checked["expiresIn"] > 0, checked
    return checked


def assert_app_parses_transcribe(body: object) -> dict[str, Any]:
    """§5.5: `url` is required too (the engine sets it, it does not rely on upstream's echo)."""
    return _check(
        body,
        {"jobId": str, "status": str, "url": str},
        {
            "ok": bool,
            "statusUrl": str,
            "estimatedTime": int,
            "requestId": str,
            "estimatedCredits": int,
            "submittedAt": str,
            "build": dict,
        },
        "transcribe",
    )


def assert_app_parses_status(body: object) -> dict[str, Any]:
    """§5.6 (and §5.7, the same model): the typed parse, nested objects included."""
    checked = _check(body, {"jobId": str, "status": str}, STATUS_OPTIONAL, "status")
    assert checked["jobId"], checked
    if "result" in checked:
        _check(checked["result"], {}, RESULT_FIELDS, "status.result")
    if "metadata" in checked:
        _check(checked["metadata"], {}, METADATA_FIELDS, "status.metadata")
    if "creditsRefunded" in checked:  # the app finds it in the raw text as an integer
        assert type(checked["creditsRefunded"]) is int, checked
    return checked


def assert_app_parses_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """§6: the envelope's `code` and `message` are what the app reads from an error."""
    assert response.status_code == status, response.text
    body = _check(response.json(), {"code": str, "message": str}, {"details": dict}, "error")
    assert body["code"] == code, body
    return body


def app_text(body: dict[str, Any]) -> str:
    """§5.6's text precedence: the first non-blank wins; completion is decided by it."""
    result = body.get("result") if isinstance(body.get("result"), dict) else {}
    assert isinstance(result, dict)
    for value in (
        body.get("transcript"),
        result.get("transcription"),
        result.get("transcript"),
        result.get("text"),
        body.get("text"),
    ):
        if isinstance(value, str) and value.strip():
            return value
    return ""


def app_ttt_health(body: dict[str, Any]) -> str:
    """§5.1: `connectivity.ttt`, else `ttt.status`; the legacy flow submits only if healthy."""
    connectivity = body.get("connectivity")
    value = connectivity.get("ttt") if isinstance(connectivity, dict) else None
    if not isinstance(value, str):
        ttt = body.get("ttt")
        value = ttt.get("status") if isinstance(ttt, dict) else None
    return value.lower() if isinstance(value, str) else "unknown"


# -- the app ------------------------------------------------------------------------------
def request_id() -> str:
    return "req_" + secrets.token_hex(12)


class MobileApp:
    """One install of the Android app: its identity, its JWT, its headers, its parsing."""

    def __init__(self, base_url: str, jwt_secret: str, name: str, recorder: SpecRecorder) -> None:
        digest = hashlib.sha256(f"{name}-{secrets.token_hex(4)}".encode()).hexdigest()[:16]
        self.user = f"mobile-{digest}"
        self.device = f"device-{digest}"
        self._secret = jwt_secret
        self.http = httpx.Client(
            base_url=base_url,
            timeout=30,
            event_hooks={"response": [recorder.sync_hook()]},
        )

    def user_jwt(self) -> str:
        """Era C (§2): HS256, claims in the app's order, 900 s, minted on the device."""
        now = int(time.time())
        claims = {
            "sub": self.user,
            "aud": "pluct-business-engine",
            "scope": "ttt:transcribe",
            "iat": now,
            "exp": now + 900,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256", headers={"typ": "JWT"})

    def headers(self, token: str) -> dict[str, str]:
        """§3: on every request, a fresh `X-Request-ID` per attempt, the same in both headers."""
        attempt = request_id()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "PluctMobile/1.0.3 (android)",
            "X-Request-ID": attempt,
            "X-Client-Request-Id": attempt,
            "X-Client-Version": "1.0.3",
            "X-Client-Version-Code": "5",
            "X-Client-Platform": "android",
            "X-User-Id": self.user,
            "X-Device-Id": self.device,
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def call(self, method: str, path: str, token: str = "", body: Any = None) -> httpx.Response:
        content = None if body is None else json.dumps(body).encode()
        response = self.http.request(method, path, content=content, headers=self.headers(token))
        assert "date" in response.headers  # read on every response to correct the clock
        return response

    def ttt_health(self) -> str:
        response = self.call("GET", "/health/services")
        assert response.is_success, response.text
        return app_ttt_health(response.json())

    def wait_until_ttt(self, verdict: str) -> None:
        wait_for(lambda: self.ttt_health() == verdict, f"/health/services to say {verdict}")

    def wallet_fallback(self, url: str) -> None:
        """§5.8: Era C tries its wallet route first and falls back only on route_not_found."""
        quote = self.call(
            "POST",
            "/v1/quote",
            self.user_jwt(),
            {
                "inputType": "tiktok_url",
                "url": url,
                "requestedProducts": ["transcript"],
                "clientRequestId": request_id(),
            },
        )
        assert_app_parses_error(quote, 404, "route_not_found")

    def balance(self) -> dict[str, Any]:
        response = self.call("GET", "/v1/credits/balance", self.user_jwt())
        assert response.status_code == 200, response.text
        body = assert_app_parses_balance(response.json())
        assert body["userId"] == self.user
        return body

    def vend(self, client_request_id: str) -> dict[str, Any]:
        body = {"userId": self.user, "clientRequestId": client_request_id}
        response = self.call("POST", "/v1/vend-token", self.user_jwt(), body)
        assert response.status_code == 200, response.text
        return assert_app_parses_vend(response.json())

    def submit(self, service_token: str, url: str, client_request_id: str) -> httpx.Response:
        body = {"url": url, "clientRequestId": client_request_id}
        return self.call("POST", "/ttt/transcribe", service_token, body)

    def transcribe(self, service_token: str, url: str, client_request_id: str) -> dict[str, Any]:
        response = self.submit(service_token, url, client_request_id)
        assert response.is_success, response.text  # any 2xx (§4)
        body = assert_app_parses_transcribe(response.json())
        assert body["url"] == url
        return body

    def poll(self, job_id: str) -> dict[str, Any]:
        """§5.7: `GET /ttt/poll/{jobId}` with the long-lived user JWT."""
        response = self.call("GET", f"/ttt/poll/{job_id}", self.user_jwt())
        assert response.status_code == 200, response.text
        return assert_app_parses_status(response.json())

    def poll_until_done(self, job_id: str) -> tuple[dict[str, Any], list[str]]:
        """The app's loop: done when there is text, failed on failed/error; else poll again."""
        seen: list[str] = []
        for _ in range(MAX_POLLS):
            body = self.poll(job_id)
            seen.append(f"{body['status']}:{body.get('progress', 0)}")
            if app_text(body) or body["status"].lower() in ("failed", "error"):
                return body, seen
        raise AssertionError(f"job {job_id} never finished: {seen}")

    def close(self) -> None:
        self.http.close()
