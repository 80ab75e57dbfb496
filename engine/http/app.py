"""The Litestar application factory.

`create_app()` with no arguments reads the environment (that is what `uvicorn --factory`
calls in every worker); tests pass settings and a store explicitly, one app per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import httpx
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide

from engine.config import Settings
from engine.domain.credits import Clock
from engine.http.controllers.admin import AdminController
from engine.http.controllers.credits import CreditsController
from engine.http.controllers.health import HealthController
from engine.http.controllers.metadata import MetadataController
from engine.http.controllers.metrics import metrics_route
from engine.http.controllers.spec import openapi_spec
from engine.http.controllers.transcription import TranscriptionController
from engine.http.controllers.vend import VendController
from engine.http.controllers.webhooks import WebhooksController
from engine.http.cors import cors_config, drop_unlisted_origins
from engine.http.dependencies import provide_services
from engine.http.errors import handle_exception
from engine.http.head import head_as_get
from engine.observability.access import Observed
from engine.observability.logs import AccessLog, configure_logging
from engine.observability.metrics import Metrics, TimedStore, observe_upstream
from engine.services import Services
from engine.store import Store, StoreUnavailable, store_from_url

log = logging.getLogger("engine")
PURGE_INTERVAL_SECONDS = 60.0


async def _purge_forever(services: Services) -> None:
    """Expired idempotency keys, windows, claims and cache entries; never the ledger."""
    while True:
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)
        try:
            await services.store.purge_expired(services.clock())
        except StoreUnavailable as exc:
            log.warning("purge skipped: %s", exc)


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    clock: Clock = time.time,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Litestar:
    """`store` and `transport` let tests supply a shared store and a fake network."""
    settings = settings or Settings.from_env()
    owns_store = store is None
    store = store or store_from_url(settings.store_url)
    metrics = Metrics() if settings.metrics_token or settings.metrics_port else None
    if metrics is not None:
        store = cast(Store, TimedStore(store, metrics))
    services = Services.build(settings, store, clock, transport)
    if metrics is not None:
        observe_upstream(services.ttt.breaker, metrics)
    access_log = AccessLog(settings.log_format == "json") if settings.access_log else None

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if owns_store:
            await services.store.open()
        purger = asyncio.create_task(_purge_forever(services))
        prober = asyncio.create_task(services.monitor.run())
        try:
            yield
        finally:
            for task in (purger, prober):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await services.aclose()
            if owns_store:
                await services.store.close()
            if metrics is not None:
                metrics.flush()
            if access_log is not None:
                access_log.flush()  # the lines of the last requests

    app = Litestar(
        route_handlers=[
            HealthController,
            CreditsController,
            VendController,
            WebhooksController,
            AdminController,
            TranscriptionController,
            MetadataController,
            openapi_spec,
            metrics_route,
        ],
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        exception_handlers={Exception: handle_exception},
        lifespan=[lifespan],
        state=State({"services": services, "metrics": metrics}),
        openapi_config=None,
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        cors_config=cors_config(settings),
    )
    # Both act before routing, so they wrap the root handler (CORS middleware included).
    app.asgi_handler = head_as_get(drop_unlisted_origins(app.asgi_handler, app.cors_config))
    # Outside everything else, so every answer (404s, 500s, CORS refusals) is logged once.
    app.asgi_handler = Observed(app.asgi_handler, access_log, metrics)
    return app


def create_server_app() -> Litestar:
    """What `pluct-engine serve` runs in each worker: `create_app()` plus process tuning."""
    settings = Settings.from_env()
    configure_logging(settings.log_format == "json")
    app = create_app(settings)
    app.on_startup.append(_freeze_heap)
    return app


def _freeze_heap() -> None:
    """What is alive once the app has started lives as long as the process; frozen, it is no
    longer walked by every full garbage collection (each took ~45 ms here and set the p99 of
    every route).  Only in a server process: tests build many apps in one."""
    gc.collect()
    gc.freeze()


def route_operations(app: Litestar) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route the app serves, as the spec spells them."""
    operations = set()
    for route in app.routes:
        path = route.path.replace("{job_id:str}", "{jobId}")
        for method in getattr(route, "methods", ()):
            if method not in {"OPTIONS", "HEAD"}:
                operations.add((method, path))
    return operations
