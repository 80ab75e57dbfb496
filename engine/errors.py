"""The engine's error vocabulary.

Every refusal is one of these; the HTTP layer renders all of them through a single handler
into the one error envelope, so the status, `code` and shape of an error live here alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

# What a 401 or 403 tells the caller to send: always the header that works on that route.
USER_AUTH = "Send a user token in the header `Authorization: Bearer <user JWT>`"
ADMIN_AUTH = "Send the admin key in the `X-API-Key` header (it is never accepted as a Bearer token)"
VENDED_AUTH = (
    "Send the token from POST /v1/vend-token in the header `Authorization: Bearer <vended token>`"
    "; a used or refunded token buys nothing, so vend a new one"
)
EITHER_AUTH = (
    "Send the job's vended token or your user token in the header"
    " `Authorization: Bearer <vended token or user JWT>`"
)
SCOPE_AUTH = (
    "Send a user token whose `scope` includes ttt:transcribe in the header"
    " `Authorization: Bearer <user JWT>`"
)
USER_MISMATCH = (
    "Omit userId, or send the user named by the `sub` of the token in"
    " `Authorization: Bearer <user JWT>`"
)
WEBHOOK_AUTH = (
    "Send the payload's HMAC-SHA256 signature, made with the webhook secret, in the"
    " `X-TTTranscribe-Signature` header"
)
METRICS_AUTH = "Send the metrics token in the header `Authorization: Bearer <METRICS_TOKEN>`"


class EngineError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    message: ClassVar[str] = "Internal error"
    guidance: ClassVar[str] = "Please try again later"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        code: str | None = None,
        guidance: str | None = None,
    ) -> None:
        self.text = message or self.message
        self.guidance_text = guidance or self.guidance
        self.details = dict(details or {})
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        self.error_code = code or self.code
        super().__init__(self.text)


class InvalidRequest(EngineError):
    status_code = 400
    code = "invalid_request"
    message = "The request is not valid"
    guidance = "Fix the request as described in details and send it again"


class InvalidUrl(InvalidRequest):
    code = "invalid_url"
    message = "Only TikTok video URLs are supported"
    guidance = "Provide a https URL on www.tiktok.com, m.tiktok.com, vm.tiktok.com or vt.tiktok.com"


class Unauthorized(EngineError):
    status_code = 401
    code = "unauthorized"
    message = "Missing or invalid credentials"
    guidance = USER_AUTH

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="pluct-engine"'})
        super().__init__(message, **kwargs)


class InsufficientCredits(EngineError):
    status_code = 402
    code = "insufficient_credits"
    message = "Insufficient credits"
    guidance = "Add credits to your account to continue"


class Forbidden(EngineError):
    status_code = 403
    code = "forbidden"
    message = "This token may not do that"
    guidance = SCOPE_AUTH


class NotFound(EngineError):
    status_code = 404
    code = "not_found"
    message = "Not found"
    guidance = "Check the identifier and try again"


class RouteNotFound(NotFound):
    code = "route_not_found"
    message = "Endpoint not found"
    guidance = "Check the API documentation for available endpoints"


class MethodNotAllowed(EngineError):
    status_code = 405
    code = "method_not_allowed"
    message = "Method not allowed on this endpoint"
    guidance = "See the Allow header"


class Conflict(EngineError):
    status_code = 409
    code = "conflict"
    message = "The request conflicts with the current state"
    guidance = "Do not repeat this request"


class Gone(EngineError):
    status_code = 410
    code = "gone"
    message = "What the request names is no longer kept"
    guidance = "Do not repeat this request"


class PayloadTooLarge(EngineError):
    status_code = 413
    code = "payload_too_large"
    message = "Request body too large"
    guidance = "Send a smaller body"


class IdempotencyKeyReused(EngineError):
    status_code = 422
    code = "idempotency_key_reused"
    message = "This idempotency key was already used with a different request"
    guidance = "Use a new clientRequestId for a new request"


class RateLimited(EngineError):
    status_code = 429
    code = "rate_limit_exceeded"
    message = "Rate limit exceeded"
    guidance = "Please wait before making another request"


class UpstreamError(EngineError):
    status_code = 502
    code = "upstream_error"
    message = "TTTranscribe service error"
    guidance = "Please try again shortly"


class ServiceUnavailable(EngineError):
    status_code = 503
    code = "service_unavailable"
    message = "Service temporarily unavailable"
    guidance = "Please retry after the time in Retry-After"


class UpstreamTimeout(EngineError):
    status_code = 504
    code = "upstream_timeout"
    message = "TTTranscribe did not answer in time"
    guidance = "Please try again shortly"


class UpstreamUnavailable(ServiceUnavailable):
    """TTTranscribe said it cannot take work now (its readiness gate, a 503).

    An `EngineError` like every upstream failure, so the transcription service releases the
    token's claim and the paid credit stays usable for a retry after `Retry-After`.
    """

    code = "upstream_unavailable"
    message = "TTTranscribe is not ready to take work"
    guidance = "Your credit is kept; retry after the time in Retry-After"


class UnprocessableUrl(InvalidUrl):
    """`/meta` refuses a missing or non-TikTok URL with 422, as the original Worker does (its
    own CLI checks for that status); `/ttt/transcribe` keeps 400 for the same input."""

    status_code = 422
