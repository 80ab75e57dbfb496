"""Prometheus metrics, cheap on the hot path.

A request adds to plain dictionaries owned by this process (about half a microsecond); once a
second, and before every scrape, the sums are moved into `prometheus_client` metrics in one
go.  Calling `prometheus_client` on every request cost a vend ~5 µs in one process and ~14 µs
in multiprocess mode (each increment writes a memory-mapped file under a lock), far past the
issue's budget for logging and metrics together.

With several workers `PROMETHEUS_MULTIPROC_DIR` is set by `pluct-engine serve` before any
worker starts, and a scrape, answered by whichever worker gets it, reads every worker's
files.  `prometheus_client` is imported only here, after that variable is settled.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

# Seconds.  Upstream transcriptions may take minutes, so the top buckets reach 10 minutes.
BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    60.0,
    600.0,
)
FLUSH_INTERVAL_SECONDS = 1.0
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
_VEND_ROUTE = "/v1/vend-token"
_REFUND_ROUTE = "/v1/credits/refund"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Histogram:
    """Observations of one label set since the last flush: count per bucket and their sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.total = 0.0


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


class Metrics:
    """Every metric the engine exports, for one process."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(multiprocess_dir())
        # Single process: a registry of our own (tests build many apps in one process).
        # Multiprocess: metrics write their files and register nowhere; a scrape collects.
        self.registry = CollectorRegistry()
        registry = None if self.multiprocess else self.registry

        def counter(name: str, text: str, labels: tuple[str, ...]) -> Any:
            return Counter(name, text, labels, registry=registry)

        def histogram(name: str, text: str, labels: tuple[str, ...]) -> Any:
            return Histogram(name, text, labels, registry=registry, buckets=BUCKETS)

        self._requests = counter(
            "pluct_http_requests_total", "HTTP requests", ("method", "route", "status")
        )
        self._latency = histogram(
            "pluct_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, in the engine",
            ("method", "route", "status"),
        )
        self._vends = counter(
            "pluct_vends_total",
            "Vend attempts: charged, replayed or the refusal's code",
            ("outcome",),
        )
        self._refunds = counter(
            "pluct_refunds_total", "Refunds: refunded or the refusal's code", ("outcome",)
        )
        self._refusals = counter(
            "pluct_refusals_total", "Error envelopes sent, by route and code", ("route", "code")
        )
        self._rate_limited = counter(
            "pluct_rate_limit_rejections_total", "Requests refused with 429", ("route",)
        )
        self._store = histogram(
            "pluct_store_operation_duration_seconds", "Store operations", ("operation",)
        )
        self._upstream = histogram(
            "pluct_upstream_request_duration_seconds",
            "Calls to the upstream, by outcome as the circuit breaker counts it",
            ("upstream", "outcome"),
        )
        self._breaker = Gauge(
            "pluct_upstream_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open (one series per worker)",
            ("upstream",),
            registry=registry,
            multiprocess_mode="all",
        )
        # By method, route, status, outcome and error code: the vend, refund and refusal
        # counters are derived from it at flush, not counted per request.
        self._pending_requests: dict[tuple[str, str, int, str, str], _Histogram] = {}
        self._pending_hist: dict[tuple[Any, tuple[str, ...]], _Histogram] = {}
        self._flusher: asyncio.TimerHandle | None = None
        self.breaker_sources: list[Callable[[], tuple[str, str]]] = []

    # -- hot path: plain dictionaries ----------------------------------------------------
    def request(
        self, method: str, route: str, status: int, seconds: float, outcome: str, code: str
    ) -> None:
        key = (method if method in _KNOWN_METHODS else "OTHER", route, status, outcome, code)
        pending = self._pending_requests.get(key)
        if pending is None:
            pending = self._pending_requests[key] = _Histogram()
        # The bucket count and `_schedule` inline: this runs for every request.
        pending.buckets[bisect_left(BUCKETS, seconds)] += 1
        pending.total += seconds
        if self._flusher is None:
            self._schedule()

    def store_key(self, operation: str) -> tuple[Any, tuple[str, ...]]:
        """What `observe` takes for one store operation, built once per operation name."""
        return (self._store, (operation,))

    def upstream_call(self, upstream: str, success: bool, seconds: float, state: str) -> None:
        self.observe((self._upstream, (upstream, "success" if success else "failure")), seconds)
        self._breaker.labels(upstream).set(BREAKER_STATES.get(state, 0))

    def observe(self, key: tuple[Any, tuple[str, ...]], seconds: float) -> None:
        pending = self._pending_hist.get(key)
        if pending is None:
            pending = self._pending_hist[key] = _Histogram()
        pending.buckets[bisect_left(BUCKETS, seconds)] += 1
        pending.total += seconds
        if self._flusher is None:
            self._schedule()

    def _schedule(self) -> None:
        if self._flusher is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flusher = loop.call_later(FLUSH_INTERVAL_SECONDS, self.flush)

    # -- once a second, and before a scrape ------------------------------------------------
    def flush(self) -> None:
        """Move what accumulated into `prometheus_client`.

        A histogram's counts are added per bucket with its children's `_buckets` and `_sum`
        values (`observe` would take one call per observation, which is what this module
        avoids).  That is `prometheus_client`'s internal layout, so the version is pinned below
        1.0 and the test of `/metrics` checks the exported buckets against requests made.
        """
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        requests, self._pending_requests = self._pending_requests, {}
        histograms, self._pending_hist = self._pending_hist, {}
        for (method, route, status, outcome, code), pending in requests.items():
            count = sum(pending.buckets)
            self._requests.labels(method, route, str(status)).inc(count)
            _add(self._latency.labels(method, route, str(status)), pending)
            reason = outcome or code
            if reason and route == _VEND_ROUTE:
                self._vends.labels(reason).inc(count)
            elif reason and route == _REFUND_ROUTE:
                self._refunds.labels(reason).inc(count)
            if code:
                self._refusals.labels(route, code).inc(count)
                if status == 429:
                    self._rate_limited.labels(route).inc(count)
        for (metric, labels), pending in histograms.items():
            _add(metric.labels(*labels), pending)

    def render(self) -> tuple[bytes, str]:
        """The exposition text of every worker, and its content type (without the charset,
        which Litestar appends)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        content_type = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")
        for source in self.breaker_sources:
            upstream, state = source()
            self._breaker.labels(upstream).set(BREAKER_STATES.get(state, 0))
        self.flush()
        if not self.multiprocess:
            return generate_latest(self.registry), content_type
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), content_type


def serve_on_loopback(port: int) -> None:
    """`METRICS_PORT`: every worker's metrics on `127.0.0.1:<port>`, from a thread of the
    supervising process (so one listener, whatever `--workers`).  Loopback only and without
    a token: reachable only from this machine.  Needs `PROMETHEUS_MULTIPROC_DIR` set first."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr="127.0.0.1", registry=registry)


def _add(child: Any, pending: _Histogram) -> None:
    """Bucket counts into a `prometheus_client` histogram child (non-cumulative inside)."""
    child._sum.inc(pending.total)
    for bucket, count in zip(child._buckets, pending.buckets, strict=True):
        if count:
            bucket.inc(count)


class TimedStore:
    """The store with each operation's latency observed; everything else passed through.

    Generic, so store operations other engineers add are timed without a change here.  Built
    only when metrics are on: it adds one coroutine layer to every store call.
    """

    def __init__(self, store: Any, metrics: Metrics) -> None:
        self._inner = store
        self._metrics = metrics
        self.backend = store.backend

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name.startswith("_") or name in {"open", "close"}:
            return attribute
        if not inspect.iscoroutinefunction(attribute):  # a plain method stays plain
            return attribute
        observe, key = self._metrics.observe, self._metrics.store_key(name)
        clock = time.perf_counter

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return await attribute(*args, **kwargs)
            finally:
                observe(key, clock() - started)

        setattr(self, name, timed)  # looked up once per name
        return timed


def observe_upstream(breaker: Any, metrics: Metrics) -> None:
    """Every upstream call ends in `breaker.record(success, latency_ms)`: its outcome and
    latency are what the metrics need, so `record` is wrapped rather than the client."""
    record: Callable[[bool, float], None] = breaker.record
    name = str(getattr(breaker, "name", "upstream"))

    def state() -> str:
        return str(breaker.snapshot().state.value)

    def recorded(success: bool, latency_ms: float) -> None:
        record(success, latency_ms)
        metrics.upstream_call(name, success, latency_ms / 1000, state())

    breaker.record = recorded
    metrics.breaker_sources.append(lambda: (name, state()))
