"""The object graph of one engine process, built once at start-up.

Everything a request needs hangs off `Services`; the HTTP layer receives it by dependency
injection, tests and notebooks can build one directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx

from engine.config import Settings
from engine.domain.credits import Clock, CreditService
from engine.domain.metadata import MetadataService
from engine.domain.ratelimit import RateLimiter
from engine.domain.tokens import TokenAuthority
from engine.domain.transcription import TranscriptionService
from engine.domain.webhooks import WebhookService
from engine.store.protocol import Store
from engine.upstream.breaker import CircuitBreaker
from engine.upstream.client import TTTClient
from engine.upstream.fetcher import PageFetcher
from engine.upstream.monitor import UpstreamMonitor


@dataclass(slots=True)
class Services:
    settings: Settings
    store: Store
    tokens: TokenAuthority
    limiter: RateLimiter
    credits: CreditService
    ttt: TTTClient
    transcription: TranscriptionService
    metadata: MetadataService
    monitor: UpstreamMonitor
    fetcher: PageFetcher
    webhooks: WebhookService
    clock: Clock = time.time
    started_at: float = field(default_factory=time.monotonic)

    @classmethod
    def build(
        cls,
        settings: Settings,
        store: Store,
        clock: Clock = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Services:
        """`transport` replaces the network for both outbound clients (tests)."""
        tokens = TokenAuthority(settings)
        limiter = RateLimiter(store, settings.rate_limit_per_minute)
        breaker = CircuitBreaker(
            "tttranscribe",
            failure_threshold=settings.breaker_failure_threshold,
            cooldown_seconds=settings.breaker_cooldown_seconds,
        )
        ttt = TTTClient(
            settings.ttt_base,
            settings.ttt_secret,
            breaker,
            transcribe_timeout=settings.transcribe_timeout_seconds,
            status_timeout=settings.status_timeout_seconds,
            http=httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None))
            if transport
            else None,
        )
        fetcher = PageFetcher(
            base=settings.meta_base,
            timeout=settings.meta_timeout_seconds,
            max_bytes=settings.meta_max_bytes,
            http=httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None))
            if transport
            else None,
        )
        transcription = TranscriptionService(store, ttt, limiter, settings, clock)
        return cls(
            settings=settings,
            store=store,
            tokens=tokens,
            limiter=limiter,
            credits=CreditService(store, tokens, limiter, settings, clock),
            ttt=ttt,
            transcription=transcription,
            metadata=MetadataService(store, fetcher, clock),
            monitor=UpstreamMonitor(ttt, settings.ttt_probe_interval_seconds),
            fetcher=fetcher,
            webhooks=WebhookService(store, transcription, ttt, settings, clock),
            clock=clock,
        )

    async def aclose(self) -> None:
        await self.ttt.aclose()
        await self.fetcher.aclose()
