"""Credits: the balance a user reads, and the grants and refunds an operator makes."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency, Provide
from litestar.types import ASGIApp

from engine.domain.idempotency import client_key
from engine.http.bodies import (
    AuditEntryBody,
    BalanceResponse,
    GrantRequest,
    GrantResponse,
    RefundRequest,
    RefundResponse,
)
from engine.http.dependencies import (
    AnyRequest,
    Caller,
    context_of,
    decode_body,
    header,
    provide_admin,
    provide_rate_limited_user,
)
from engine.http.responses import json_response
from engine.observability.context import note_outcome
from engine.services import Services
from engine.store.records import AuditEntry

EPOCH = "1970-01-01T00:00:00.000Z"


def entry_body(entry: AuditEntry) -> AuditEntryBody:
    return AuditEntryBody(
        id=entry.id,
        user_id=entry.user_id,
        action=entry.action,
        delta=entry.delta,
        balance_after=entry.balance_after,
        request_id=entry.request_id,
        ip=entry.ip,
        user_agent=entry.user_agent,
        at=entry.at,
        reason=entry.reason,
        http_request_id=entry.http_request_id,
    )


class CreditsController(Controller):
    path = "/v1/credits"

    @get("/balance", dependencies={"caller": Provide(provide_rate_limited_user)})
    async def balance(
        self, caller: NamedDependency[Caller], services: NamedDependency[Services]
    ) -> ASGIApp:
        """`main` mirrors `balance` because the app shows `main + bonus` as the credits."""
        view = await services.credits.balance(caller.principal.user_id)
        body = BalanceResponse(
            user_id=caller.principal.user_id,
            balance=view.balance,
            main=view.balance,
            updated_at=view.updated_at or EPOCH,
        )
        return json_response(body, headers=caller.headers())

    @post("/add", status_code=200, dependencies={"admin": Provide(provide_admin)})
    async def add(
        self, request: AnyRequest, admin: NamedDependency[None], services: NamedDependency[Services]
    ) -> ASGIApp:
        data = await decode_body(request, GrantRequest)
        key = client_key(data.client_request_id, header(request, b"x-client-request-id"))
        granted = await services.credits.grant(
            data.user_id, data.amount, data.reason, client_key=key, context=context_of(request)
        )
        receipt = granted.receipt
        body = GrantResponse(
            user_id=receipt.user_id,
            amount=receipt.amount,
            reason=receipt.reason,
            new_balance=receipt.balance_after,
            balance_after=receipt.balance_after,
            timestamp=receipt.at,
            request_id=receipt.request_id,
        )
        return json_response(
            body, headers={"Idempotent-Replayed": "true"} if granted.replayed else None
        )

    @post("/refund", status_code=200, dependencies={"admin": Provide(provide_admin)})
    async def refund(
        self, request: AnyRequest, admin: NamedDependency[None], services: NamedDependency[Services]
    ) -> ASGIApp:
        data = await decode_body(request, RefundRequest)
        entry = await services.credits.refund(
            data.user_id, data.request_id, data.reason, context_of(request)
        )
        note_outcome("refunded")
        body = RefundResponse(
            user_id=entry.user_id,
            request_id=entry.request_id,
            balance_after=entry.balance_after,
            entry=entry_body(entry),
        )
        return json_response(body)
