"""Runtime settings, read once from the environment.

Secrets accept the same alias names as the original Worker so existing deployments keep
working; the first non-empty name wins.  Settings are immutable and passed explicitly, so
tests can build an app with any configuration without touching `os.environ`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

JWT_SECRET_NAMES = ("ENGINE_JWT_SECRET", "JWT_SECRET", "ENGINE_SHARED_SECRET")
ADMIN_KEY_NAMES = ("ENGINE_ADMIN_KEY", "ADMIN_SECRET", "ADMIN_API_KEY")
TTT_SECRET_NAMES = ("TTT_SHARED_SECRET", "ENGINE_SHARED_SECRET")
DEFAULT_STORE_URL = "sqlite:///data/pluct-engine.db"
DEFAULT_TTT_BASE = "http://127.0.0.1:8788"


class ConfigError(Exception):
    """The environment cannot produce a working engine; the message says what to set."""


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return ""


def _named(env: Mapping[str, str], names: tuple[str, ...]) -> str:
    """Which of `names` provides the value `_first` returns; "" when none does."""
    return next((name for name in names if env.get(name, "").strip()), "")


def _check_upstream_secret(env: Mapping[str, str], jwt: str, admin: str, ttt: str) -> None:
    """The secret sent to TTTranscribe in `X-Engine-Auth` must be the server's own.

    The JWT secret ships inside the mobile app, so it is public: an upstream secret taken from
    an alias the JWT secret also reads (`ENGINE_SHARED_SECRET`), or equal to it, lets anyone
    call TTTranscribe without paying; equal to the admin key, it hands the upstream the key
    that grants credits.  Dev mode generates three distinct secrets and is not checked.
    """
    source = _named(env, TTT_SECRET_NAMES)
    if source in JWT_SECRET_NAMES:
        raise ConfigError(
            f"TTT_SHARED_SECRET is not set and the upstream secret would come from {source},"
            " which is also a JWT secret alias: set TTT_SHARED_SECRET to a secret of its own"
        )
    if hmac.compare_digest(ttt.encode(), jwt.encode()):
        raise ConfigError(
            f"{source} equals {_named(env, JWT_SECRET_NAMES)}: the upstream secret must differ"
            " from the app's JWT secret"
        )
    if hmac.compare_digest(ttt.encode(), admin.encode()):
        raise ConfigError(
            f"{source} equals {_named(env, ADMIN_KEY_NAMES)}: the upstream secret must differ"
            " from the admin key"
        )


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first is the default), case-insensitive."""
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be on or off (1/0, true/false), got {raw!r}")


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds; fractions allowed (tests probe every 0.2 s)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {raw}")
    return value


def _origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """`CORS_ORIGINS`: a comma list of origins (`*` for any); empty means no CORS."""
    return tuple(o.strip().rstrip("/") for o in env.get("CORS_ORIGINS", "").split(",") if o.strip())


def generate_missing_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """Dev mode: invent each secret that no alias provides.

    The caller exports them before any worker starts, so every worker shares one set.
    """
    generated: dict[str, str] = {}
    for names in (JWT_SECRET_NAMES, ADMIN_KEY_NAMES, TTT_SECRET_NAMES):
        if not _first(env, names):
            generated[names[0]] = secrets.token_urlsafe(32)
    return generated


def derive_vend_secret(admin_key: str) -> str:
    """Key for vended tokens when none is configured.

    The user-token secret is held by every mobile client (it mints its own tokens), so a
    vended token signed with it could be forged.  The admin key never leaves the server, so a
    key derived from it is server-only and identical on every worker and machine.
    """
    return hmac.new(admin_key.encode(), b"pluct-engine/vended-token/v1", hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Settings:
    jwt_secret: str
    admin_key: str
    vend_secret: str
    ttt_secret: str
    ttt_base: str = DEFAULT_TTT_BASE
    store_url: str = DEFAULT_STORE_URL
    rate_limit_per_minute: int = 100
    idempotency_ttl_seconds: int = 24 * 3600
    jwt_leeway_seconds: int = 60
    jwt_audience: str = "pluct-business-engine"
    vend_token_ttl_seconds: int = 900
    max_grant_amount: int = 1_000_000
    max_body_bytes: int = 64 * 1024
    transcribe_timeout_seconds: float = 600.0
    status_timeout_seconds: float = 30.0
    meta_base: str = ""
    meta_timeout_seconds: float = 8.0
    meta_max_bytes: int = 2 * 1024 * 1024
    breaker_failure_threshold: int = 5
    breaker_cooldown_seconds: float = 30.0
    build_ref: str = "unknown"
    dev_mode: bool = False
    # The HTTP server's own limits (engine/http/server.py).
    max_header_bytes: int = 16 * 1024
    read_timeout_seconds: int = 10
    keepalive_seconds: int = 5
    # Observability (issue 20): `LOG_FORMAT`, `ACCESS_LOG`, `METRICS_TOKEN` (unset: no metrics
    # are collected and `/metrics` is 404).
    log_format: str = "human"
    access_log: bool = True
    metrics_token: str = ""
    metrics_port: int = 0  # `METRICS_PORT`: also serve metrics on 127.0.0.1:<port>, no token
    # The job lifecycle: kept results, failed-job refunds, the TTTranscribe webhook.
    refund_failed_jobs: bool = True
    job_lost_grace_seconds: float = 600.0
    webhook_secret: str = ""  # empty: the upstream secret (TTT_SHARED_SECRET)
    ttt_probe_interval_seconds: float = 10.0
    cors_origins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings, refusing to start without the three secrets."""
        env = os.environ if env is None else env
        dev = env.get("ENGINE_DEV", "").strip().lower() in {"1", "true", "yes"}
        jwt_secret = _first(env, JWT_SECRET_NAMES)
        admin_key = _first(env, ADMIN_KEY_NAMES)
        ttt_secret = _first(env, TTT_SECRET_NAMES)
        missing = [
            names[0]
            for names, value in (
                (JWT_SECRET_NAMES, jwt_secret),
                (ADMIN_KEY_NAMES, admin_key),
                (TTT_SECRET_NAMES, ttt_secret),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                "missing secrets: "
                + ", ".join(missing)
                + " (or run `serve --dev` to generate them)"
            )
        if not dev:
            _check_upstream_secret(env, jwt_secret, admin_key, ttt_secret)
        vend_secret = env.get("ENGINE_VEND_SECRET", "").strip() or derive_vend_secret(admin_key)
        if vend_secret == jwt_secret:
            raise ConfigError("ENGINE_VEND_SECRET must differ from the user JWT secret")
        return cls(
            jwt_secret=jwt_secret,
            admin_key=admin_key,
            vend_secret=vend_secret,
            ttt_secret=ttt_secret,
            ttt_base=env.get("TTT_BASE", "").strip().rstrip("/") or DEFAULT_TTT_BASE,
            store_url=env.get("ENGINE_STORE_URL", "").strip() or DEFAULT_STORE_URL,
            rate_limit_per_minute=_int(env, "RATE_LIMIT_PER_MINUTE", 100),
            idempotency_ttl_seconds=_int(env, "IDEMPOTENCY_TTL_SECONDS", 24 * 3600, minimum=1),
            jwt_leeway_seconds=_int(env, "JWT_LEEWAY_SECONDS", 60),
            transcribe_timeout_seconds=float(_int(env, "TTT_TRANSCRIBE_TIMEOUT_SECONDS", 600, 1)),
            status_timeout_seconds=float(_int(env, "TTT_STATUS_TIMEOUT_SECONDS", 30, 1)),
            meta_base=env.get("META_FETCH_BASE", "").strip().rstrip("/"),
            breaker_failure_threshold=_int(env, "BREAKER_FAILURE_THRESHOLD", 5, 1),
            breaker_cooldown_seconds=float(_int(env, "BREAKER_COOLDOWN_SECONDS", 30, 1)),
            build_ref=env.get("BUILD_REF", "").strip() or "unknown",
            dev_mode=dev,
            max_header_bytes=_int(env, "ENGINE_MAX_HEADER_BYTES", 16 * 1024, minimum=1024),
            read_timeout_seconds=_int(env, "ENGINE_READ_TIMEOUT_SECONDS", 10, minimum=1),
            keepalive_seconds=_int(env, "ENGINE_KEEPALIVE_SECONDS", 5, minimum=1),
            log_format=_choice(env, "LOG_FORMAT", ("human", "json")),
            access_log=_flag(env, "ACCESS_LOG", default=True),
            metrics_token=env.get("METRICS_TOKEN", "").strip(),
            metrics_port=_int(env, "METRICS_PORT", 0),
            refund_failed_jobs=_flag(env, "REFUND_FAILED_JOBS", default=True),
            job_lost_grace_seconds=float(_int(env, "JOB_LOST_GRACE_SECONDS", 600)),
            webhook_secret=env.get("TTT_WEBHOOK_SECRET", "").strip(),
            ttt_probe_interval_seconds=_seconds(env, "TTT_PROBE_INTERVAL_SECONDS", 10.0),
            cors_origins=_origins(env),
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def sqlite_path(store_url: str) -> Path:
    """`sqlite:///relative/path` or `sqlite:////absolute/path`, as SQLAlchemy spells them."""
    prefix = "sqlite:///"
    if not store_url.startswith(prefix):
        raise ConfigError(f"not a sqlite store URL: {store_url!r}")
    rest = store_url[len(prefix) :]
    if not rest:
        raise ConfigError("sqlite store URL names no file")
    return Path(rest)
