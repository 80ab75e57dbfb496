"""What the TTTranscribe simulator holds: its faults, its counters (`GET /__stats`) and its
jobs.  Plain dataclasses, so tests and notebooks build faults and read stats by name."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    not_ready: bool = False  # the readiness gate: /ready and POST /transcribe answer 503
    retry_after: int = 0  # a Retry-After on the not-ready 503 (the real upstream sends none)
    cache_hits: bool = False  # a URL that completed before comes back completed at once
    routes: str = "all"  # "transcribe", "status" or "all"


@dataclass
class Stats:
    transcribe_calls: int = 0
    jobs_created: int = 0
    status_calls: int = 0
    meta_fetches: int = 0
    unauthorized: int = 0
    webhooks_sent: int = 0
    webhooks_delivered: int = 0
    webhooks_failed: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    last_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Job:
    id: str
    url: str
    submitted_at: str
    polls: int = 0
    fails: bool = False
    request_id: str = ""
    terminal: str = ""  # "completed" or "failed" once settled
    completed_at: str = ""
    cache_hit: bool = False
