"""Request and response bodies, one msgspec Struct each, named as in `spec/openapi.yaml`.

Responses are supersets where the seed README and the live Worker disagree (see the spec's
`x-compatibility` notes): both the README's and the mobile app's parsers find their fields.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType

from engine.domain.ids import ID_MAX_LENGTH, ID_PATTERN

UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
Reason = Annotated[str, msgspec.Meta(max_length=500)]
ClientKey = Annotated[str, msgspec.Meta(max_length=128)]


class Body(msgspec.Struct, rename="camel", kw_only=True):
    """Base of every body: camelCase on the wire.

    Optional response fields are `UNSET` rather than `None`, so they are left out instead of
    sent as `null` (the mobile client rejects a `null` where it expects a string).
    """


# -- requests ------------------------------------------------------------------------------
class VendRequest(Body, kw_only=True):
    user_id: UserId | None = None
    client_request_id: ClientKey | None = None


class GrantRequest(Body, kw_only=True):
    user_id: UserId
    amount: int | float  # JSON Schema's integer admits 5.0; the service refuses fractions
    reason: Reason = "Admin credit addition"
    client_request_id: ClientKey | None = None


class TranscribeRequest(Body, kw_only=True):
    url: Annotated[str, msgspec.Meta(max_length=2048)]
    client_request_id: ClientKey | None = None


class RefundRequest(Body, kw_only=True):
    user_id: UserId
    request_id: UserId  # a vend's `req_<hex>`: the same characters as a user id
    reason: Reason = "Refund"


# -- responses -----------------------------------------------------------------------------
class VendResponse(Body, kw_only=True):
    ok: bool = True
    token: str
    service_token: str
    scope: str
    expires_in: int
    expires_at: str
    balance_after: int
    request_id: str
    client_request_id: str | UnsetType = UNSET


class BalanceResponse(Body, kw_only=True):
    ok: bool = True
    user_id: str
    balance: int
    main: int
    bonus: int = 0
    updated_at: str


class GrantResponse(Body, kw_only=True):
    ok: bool = True
    message: str = "Credits added successfully"
    user_id: str
    amount: int
    reason: str
    new_balance: int
    balance_after: int
    timestamp: str
    request_id: str


class AuditEntryBody(Body, kw_only=True):
    id: int
    user_id: str
    action: str
    delta: int
    balance_after: int
    request_id: str
    ip: str
    user_agent: str
    at: str
    reason: str = ""
    http_request_id: str = ""


class RefundResponse(Body, kw_only=True):
    ok: bool = True
    user_id: str
    request_id: str
    refunded: int = 1
    balance_after: int
    entry: AuditEntryBody


class AuditResponse(Body, kw_only=True):
    ok: bool = True
    user_id: str
    entries: list[AuditEntryBody]
    next_after: int | UnsetType = UNSET


class BuildInfo(Body, kw_only=True):
    ref: str
    deployed_at: str


class StoreHealth(Body, kw_only=True):
    backend: str
    reachable: bool
    latency_ms: float
    problem: str | UnsetType = UNSET  # why a reachable store cannot serve


class Connectivity(Body, kw_only=True):
    store: str
    ttt: str
    circuit_breaker: str


class HealthResponse(Body, kw_only=True):
    ok: bool
    status: str
    uptime_seconds: int
    version: str
    build: BuildInfo
    store: StoreHealth
    connectivity: Connectivity


class UpstreamProbe(Body, kw_only=True):
    """The last readiness probe of TTTranscribe (`/ready`, else `/health`)."""

    ok: bool
    endpoint: str
    checked_at: str
    latency_ms: float
    status_code: int | UnsetType = UNSET
    reason: str | UnsetType = UNSET


class UpstreamHealth(Body, kw_only=True):
    status: str
    response_time: float
    consecutive_failures: int
    reason: str | UnsetType = UNSET
    last_probe: UpstreamProbe | UnsetType = UNSET


class BreakerHealth(Body, kw_only=True):
    status: str
    state: str
    response_time: float
    consecutive_failures: int
    failure_rate: float
    retry_after_seconds: int


class ServiceConnectivity(Body, kw_only=True):
    ttt: str


class ServiceHealthResponse(Body, kw_only=True):
    ttt: UpstreamHealth
    circuit_breaker: BreakerHealth
    connectivity: ServiceConnectivity
    probe_interval_seconds: float
