"""Operator reads: the audit trail and the balance of one user."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency, Provide
from litestar.types import ASGIApp
from msgspec import UNSET

from engine.domain.ids import is_valid_id
from engine.errors import InvalidRequest
from engine.http.bodies import AuditResponse, BalanceResponse
from engine.http.controllers.credits import EPOCH, entry_body
from engine.http.dependencies import AnyRequest, provide_admin
from engine.http.responses import json_response
from engine.services import Services

MAX_PAGE = 500
# More digits than any bound below: a longer string is refused without parsing it.
_MAX_DIGITS = 19


def _int_param(request: AnyRequest, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # `str.isdigit` is true of "²" and "٣", which `int()` then refuses or reads: ASCII only.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_DIGITS) or not (
        low <= int(raw) <= high
    ):
        raise InvalidRequest(
            f"{name} must be an integer from {low} to {high}", details={"parameter": name}
        )
    return int(raw)


def _user_param(request: AnyRequest) -> str:
    user_id = request.query_params.get("userId", "")
    if not is_valid_id(user_id):
        raise InvalidRequest("userId query parameter is required", details={"parameter": "userId"})
    return user_id


class AdminController(Controller):
    path = "/v1/admin"
    dependencies = {"admin": Provide(provide_admin)}

    @get("/audit")
    async def audit(
        self, request: AnyRequest, admin: NamedDependency[None], services: NamedDependency[Services]
    ) -> ASGIApp:
        user_id = _user_param(request)
        limit = _int_param(request, "limit", 100, 1, MAX_PAGE)
        after = _int_param(request, "after", 0, 0, 2**62)
        entries = await services.credits.audit(user_id, limit, after)
        next_after = entries[-1].id if len(entries) == limit else UNSET
        body = AuditResponse(
            user_id=user_id, entries=[entry_body(e) for e in entries], next_after=next_after
        )
        return json_response(body)

    @get("/balance")
    async def balance(
        self, request: AnyRequest, admin: NamedDependency[None], services: NamedDependency[Services]
    ) -> ASGIApp:
        """Any user's balance, for operators (`pluct-engine credits balance`); the same body as
        the user's own `GET /v1/credits/balance`."""
        user_id = _user_param(request)
        view = await services.credits.balance(user_id)
        body = BalanceResponse(
            user_id=user_id,
            balance=view.balance,
            main=view.balance,
            updated_at=view.updated_at or EPOCH,
        )
        return json_response(body)
