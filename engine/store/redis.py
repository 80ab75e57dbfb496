"""Redis backend: many workers on many machines share one Redis (or a Redis Cluster).

Each domain operation is one Lua script or one single-key command, so it is atomic on the
server; nothing is read into Python and written back.  Key layout (see the README):

    {u:<user>}:bal          hash  balance, updated_at, vend:<requestId> -> vended | refunded
    {u:<user>}:ledger       list  JSON audit entries, append-only, id = position; an entry
                                  moved to the archive leaves "" (`redis_archive`)
    {u:<user>}:archived     str   entries before this position are in the archive
    {u:<user>}:records      str   vends before this position have no vend:/tok: record left
    {u:<user>}:idem:<scope>:<key>  string  fingerprint|stored receipt, expires with retention
    resp:<scope>:<key>      hash  remembered response (fingerprint, status, body)
    {u:<subject>}:rl:<window>  int  requests in a fixed window
    cache:<key>             str   cached value

On a single Redis every request's command goes out on one long-lived, auto-pipelined
connection (`CommandBatcher`); redis-py's own pool serves start-up checks, snapshots and script
loads.  A cluster client sends each command alone to its slot's primary.  Nothing is retried
automatically (`NO_RETRY`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.store import redis_archive
from engine.store import redis_scripts as lua
from engine.store.protocol import StoreUnavailable
from engine.store.records import (
    UNFUNDED_REFUSALS_KEPT_PER_MINUTE,
    AuditEntry,
    BalanceView,
    Context,
    GrantOrder,
    GrantOutcome,
    GrantReceipt,
    IdempotencyKey,
    RefundOrder,
    RefundOutcome,
    RefusalOrder,
    SpendOutcome,
    StoredResponse,
    VendOrder,
    VendReceipt,
    WindowCount,
    token_of_vend,
)
from engine.store.redis_batch import CommandBatcher
from engine.store.redis_history import RedisHistory, _entry_at, _text, _user
from engine.store.redis_jobs import RedisJobs, token_key
from engine.timeutil import iso

log = logging.getLogger("engine.store.redis")
_vend_receipt = msgspec.json.Decoder(VendReceipt)
_grant_receipt = msgspec.json.Decoder(GrantReceipt)
_encode = msgspec.json.encode
POOL_SIZE = 64
CLUSTER_SCHEME = "redis+cluster://"
POOL_TIMEOUT_SECONDS = 5.0
REPLY_TIMEOUT_SECONDS = 5.0
# Never resend a command on a connection error: a script whose reply was lost may have run, and
# running a spend twice would charge twice.  The caller gets a 503; its idempotency key is what
# makes its own retry safe.
NO_RETRY = Retry(NoBackoff(), 0)
# Error replies of a Redis that answers but refuses every write.
_REFUSES_WRITES = ("OOM command not allowed", "MISCONF")
_WRITE_PROBE_KEY = "engine:write-probe"


def _idem_key(user_id: str, key: IdempotencyKey | None) -> str:
    if key is None:
        return _user(user_id) + ":idem:-"
    return f"{_user(user_id)}:idem:{key.scope}:{key.key}"


def _idem_args(key: IdempotencyKey | None) -> list[str | int]:
    """The (use it?, fingerprint, expiry in ms) arguments every idempotent script takes."""
    if key is None:
        return ["0", "", 0]
    return ["1", key.fingerprint, _ms(key.expires_at)]


def _window_key(subject: str, start: float) -> str:
    """In the subject's slot, so a vend can count itself inside its spend script."""
    return f"{_user(subject)}:rl:{int(start)}"


def _entry_fields(user_id: str, request_id: str, context: Context, at: str) -> bytes:
    """A ledger entry's members the caller knows, as JSON for the script to wrap (see
    `redis_scripts._APPEND`)."""
    return _encode(
        {
            "userId": user_id,
            "requestId": request_id,
            "ip": context.ip,
            "userAgent": context.user_agent,
            "at": at,
            "httpRequestId": context.http_request_id,
        }
    )[1:-1]


def _tally_key(minute: int) -> str:
    return f"refusals:{minute}"


def _ms(epoch_seconds: float) -> int:
    return int(epoch_seconds * 1000)


class RedisStore(RedisJobs, RedisHistory):
    """The `Store` protocol on Redis: `redis://host:port/db`, or a Redis Cluster through any
    of its nodes: `redis+cluster://host:port`."""

    backend = "redis"

    def __init__(self, url: str, archive: redis_archive.ArchiveSettings | None = None) -> None:
        """`archive`: where and when history leaves RAM (`redis_archive`); None keeps it."""
        self.url = url
        self.degraded = ""
        self._archive_settings = archive
        self._archive = redis_archive.Archive(archive.path) if archive else None
        self._archiver: asyncio.Task[None] | None = None
        self._pool: aioredis.BlockingConnectionPool | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._batcher: CommandBatcher | None = None
        self._redis: aioredis.Redis | RedisCluster
        if url.startswith(CLUSTER_SCHEME):
            # Every script's keys share one hash tag, so each runs on one slot's primary.
            self._redis = RedisCluster.from_url(
                "redis://" + url[len(CLUSTER_SCHEME) :],
                max_connections=POOL_SIZE,
                socket_connect_timeout=2.0,
                socket_timeout=REPLY_TIMEOUT_SECONDS,
                retry=NO_RETRY,
            )
            # The cluster client has no blocking pool: past `max_connections` it fails, so
            # commands wait their turn here instead.
            self._in_flight = asyncio.Semaphore(POOL_SIZE)
        else:
            # Start-up checks, snapshots and script loads; requests go through the batcher.
            self._pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=POOL_SIZE,
                timeout=POOL_TIMEOUT_SECONDS,
                socket_connect_timeout=2.0,
                socket_timeout=REPLY_TIMEOUT_SECONDS,
                health_check_interval=30,
                retry=NO_RETRY,
            )
            self._redis = aioredis.Redis(connection_pool=self._pool)
            self._batcher = CommandBatcher(url, deadline=REPLY_TIMEOUT_SECONDS)
        self._spend = self._redis.register_script(lua.SPEND)
        self._grant = self._redis.register_script(lua.GRANT)
        self._refund = self._redis.register_script(lua.REFUND)
        self._refuse = self._redis.register_script(lua.REFUSE)
        self._ledger_head = self._redis.register_script(lua.LEDGER_HEAD)
        self._hit = self._redis.register_script(lua.HIT_WINDOW)
        self._remember = self._redis.register_script(lua.REMEMBER)
        self._tombstones = self._redis.register_script(lua.TOMBSTONE)
        self._drop_vends = self._redis.register_script(lua.DROP_VEND_RECORDS)
        self._register_job_scripts()

    def _call(self, *command: Any) -> Awaitable[Any]:
        """One command: pipelined with the rest of this loop turn's on a single Redis; on a
        cluster, sent alone to its slot's primary.  Returns what to await rather than being a
        coroutine itself: one layer fewer on the way to every reply."""
        if self._batcher is not None:
            return self._guard(self._batcher.call(*command))
        return self._limited(lambda: self._redis.execute_command(*command))

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        evalsha = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self._call(*evalsha)
        except NoScriptError:
            # Redis lost its script cache (restart, flush) and nothing ran: load the script
            # (on every primary of a cluster) and send it once more.
            await self._limited(lambda: self._redis.script_load(script.script))
            return await self._call(*evalsha)

    async def _limited(self, reply: Callable[[], Awaitable[Any]]) -> Any:
        """On a cluster, wait for one of `_in_flight`'s places first."""
        if self._in_flight is None:
            return await self._guard(reply())
        async with self._in_flight:
            return await self._guard(reply())

    async def _guard(self, reply: Awaitable[Any]) -> Any:
        """Redis being unreachable or not ready is a `StoreUnavailable` (the API's 503).

        So is a Redis that answers but refuses writes: past `maxmemory` (OOM) or after a
        failed snapshot or AOF write (MISCONF).  Redis refuses a script's first write, so
        nothing of it was applied; the store is `degraded` until a write succeeds (`ping`).
        """
        try:
            return await reply
        except (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        except ResponseError as exc:
            text = str(exc)
            if any(reason in text for reason in _REFUSES_WRITES):
                self.degraded = f"redis refuses writes: {text[:160]}"
                raise StoreUnavailable(f"redis: {text}") from exc
            if "LOADING" in text or "MASTERDOWN" in text or "READONLY" in text:
                raise StoreUnavailable(f"redis: {exc}") from exc
            raise

    async def open(self) -> None:
        await self._call("PING")
        if self._archive_settings is not None and self._archiver is None:
            self._archiver = asyncio.get_running_loop().create_task(self._archive_forever())
        try:
            config = await self._redis.config_get("appendonly")
        except RedisError:
            return  # managed Redis often forbids CONFIG; nothing to check then
        if isinstance(config, dict) and _text(config.get("appendonly", "yes")) != "yes":
            log.warning(
                "redis persistence: appendonly is off; acknowledged writes since the last"
                " snapshot are lost if redis-server crashes (set appendonly yes)"
            )

    async def close(self) -> None:
        await redis_archive.cancel(self._archiver)
        self._archiver = None
        if self._archive is not None:
            await asyncio.to_thread(self._archive.close)
        if self._batcher is not None:
            await self._batcher.aclose()
        await self._redis.aclose()
        if self._pool is not None:
            await self._pool.disconnect()

    async def ping(self) -> bool:
        try:
            await self._call("PING")
        except StoreUnavailable:
            return False
        if self.degraded:
            # PING passes under OOM and MISCONF; only a write tells when writes work again.
            with contextlib.suppress(StoreUnavailable):
                await self._call("SET", _WRITE_PROBE_KEY, "1", "PX", "10000")
                self.degraded = ""
        return True

    # -- credits -------------------------------------------------------------------------
    async def spend(self, order: VendOrder) -> SpendOutcome:
        user, idem, rate = _user(order.user_id), order.idempotency, order.rate
        start = order.now - order.now % rate.window_seconds if rate else 0.0
        reset_at = start + rate.window_seconds if rate else 0.0
        window_key = _window_key(rate.subject, start) if rate else user + ":rl:-"
        at = iso(order.now)
        receipt_head = b""
        if idem is not None:  # the script adds balance_after and the closing brace
            receipt_head = _encode(
                {
                    "request_id": order.request_id,
                    "jti": order.jti,
                    "issued_at": order.issued_at,
                    "expires_at": order.expires_at,
                    "client_request_id": order.client_request_id,
                    "at": at,
                }
            )[:-1]
        status, payload, counted = await self._run(
            self._spend,
            [
                user + ":bal",
                user + ":ledger",
                _idem_key(order.user_id, idem),
                window_key,
            ],
            [
                _entry_fields(order.user_id, order.request_id, order.context, at),
                order.request_id,
                receipt_head,
                at,
                *_idem_args(idem),
                rate.limit if rate else 0,
                _ms(reset_at),
            ],
        )
        status = _text(status)
        if status == "unfunded":
            status = "insufficient"
            if await self._tally("insufficient_credits", order.now):
                await self._refusal_entry(
                    order.user_id, order.request_id, "insufficient_credits", order.context, at
                )
        window = WindowCount(int(counted), reset_at) if rate else None
        if status == "replayed":
            receipt = _vend_receipt.decode(payload)
            return SpendOutcome(status, receipt.balance_after, receipt, window)
        balance = int(payload)
        if status == "charged":
            receipt = VendReceipt(
                request_id=order.request_id,
                jti=order.jti,
                issued_at=order.issued_at,
                expires_at=order.expires_at,
                balance_after=balance,
                client_request_id=order.client_request_id,
                at=at,
            )
            return SpendOutcome(status, balance, receipt, window)
        return SpendOutcome(status, balance, window=window)

    async def grant(self, order: GrantOrder) -> GrantOutcome:
        user, idem, at = _user(order.user_id), order.idempotency, iso(order.now)
        status, payload = await self._run(
            self._grant,
            [user + ":bal", user + ":ledger", _idem_key(order.user_id, idem)],
            [
                order.user_id,
                order.amount,
                order.request_id,
                order.reason,
                _entry_fields(order.user_id, order.request_id, order.context, at),
                at,
                *_idem_args(idem),
            ],
        )
        status = _text(status)
        if status == "key_conflict":
            return GrantOutcome(status)
        return GrantOutcome(status, _grant_receipt.decode(payload))

    async def refund(self, order: RefundOrder) -> RefundOutcome:
        user, at = _user(order.user_id), iso(order.now)
        status, entry_id, entry = await self._run(
            self._refund,
            # `:vends` holds the vends that engines before the current layout recorded; the
            # token's record (jobs) refuses a refund for a token that bought a job.
            [
                user + ":bal",
                user + ":ledger",
                user + ":vends",
                token_key(order.user_id, token_of_vend(order.vend_request_id) or "-"),
            ],
            [
                order.vend_request_id,
                order.reason,
                _entry_fields(order.user_id, order.vend_request_id, order.context, at),
                at,
                _ms(order.now),
            ],
        )
        status = _text(status)
        # No record: a vend archived with its record is refused as such, not as "no vend".
        if (
            status == "not_found"
            and self._archive is not None
            and await asyncio.to_thread(
                self._archive.has_vend, order.user_id, order.vend_request_id
            )
        ):
            return RefundOutcome("vend_archived")
        if status != "refunded":
            return RefundOutcome(status)
        return RefundOutcome(status, _entry_at(entry_id, entry))

    async def _tally(self, reason: str, now: float) -> bool:
        """Count a refusal of a user without an account in the minute's tally; True while the
        minute keeps entries of its own for them (see `UNFUNDED_REFUSALS_KEPT_PER_MINUTE`).
        A command of its own: the tally is one key for all users, in no user's slot."""
        counted = await self._call("HINCRBY", _tally_key(int(now // 60)), reason, 1)
        return int(counted) <= UNFUNDED_REFUSALS_KEPT_PER_MINUTE

    async def _refusal_entry(
        self,
        user_id: str,
        request_id: str,
        reason: str,
        context: Context,
        at: str,
        keep: bool = True,
    ) -> AuditEntry | None:
        user = _user(user_id)
        entry_id, entry = await self._run(
            self._refuse,
            [user + ":bal", user + ":ledger"],
            [
                _encode(reason),
                _entry_fields(user_id, request_id, context, at),
                "1" if keep else "0",
            ],
        )
        return _entry_at(entry_id, entry) if entry_id else None

    async def refusal_tally(self, minute: int) -> dict[str, int]:
        raw = await self._call("HGETALL", _tally_key(minute))
        if isinstance(raw, dict):
            return {_text(k): int(v) for k, v in raw.items()}
        pairs = list(raw or [])
        return {_text(pairs[i]): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}

    async def record_refusal(self, order: RefusalOrder) -> AuditEntry | None:
        at = iso(order.now)
        args = (order.user_id, order.request_id, order.reason, order.context, at)
        entry = await self._refusal_entry(*args, keep=False)
        if entry is None and await self._tally(order.reason, order.now):
            entry = await self._refusal_entry(*args)
        return entry

    async def balance(self, user_id: str) -> BalanceView:
        values = await self._call("HMGET", _user(user_id) + ":bal", "balance", "updated_at")
        if values[0] is None:
            return BalanceView(0, None)
        return BalanceView(int(values[0]), _text(values[1]) if values[1] else None)

    async def audit(self, user_id: str, limit: int, after_id: int) -> list[AuditEntry]:
        raw = await self._call("LRANGE", _user(user_id) + ":ledger", after_id, after_id + limit - 1)
        return await self._entries(user_id, after_id + 1, raw)

    # -- request bookkeeping -------------------------------------------------------------
    async def hit_window(self, subject: str, window_seconds: int, now: float) -> WindowCount:
        start = now - now % window_seconds
        reset_at = start + window_seconds
        count = await self._run(self._hit, [_window_key(subject, start)], [_ms(reset_at)])
        return WindowCount(int(count), reset_at)

    async def remember(
        self, scope: str, key: str, response: StoredResponse, ttl_seconds: float, now: float
    ) -> StoredResponse:
        fingerprint, status, body = await self._run(
            self._remember,
            [f"resp:{scope}:{key}"],
            [response.fingerprint, response.status_code, response.body, _ms(now + ttl_seconds)],
        )
        return StoredResponse(_text(fingerprint), int(status), bytes(body))

    async def recall(self, scope: str, key: str, now: float) -> StoredResponse | None:
        values = await self._call("HMGET", f"resp:{scope}:{key}", "fp", "status", "body")
        fingerprint, status, body = cast(list[bytes | None], values)
        if fingerprint is None or status is None or body is None:
            return None
        return StoredResponse(_text(fingerprint), int(status), body)

    async def cache_get(self, key: str, now: float) -> bytes | None:
        value = await self._call("GET", f"cache:{key}")
        return cast(bytes | None, value)

    async def cache_set(self, key: str, value: bytes, ttl_seconds: float, now: float) -> None:
        await self._call("SET", f"cache:{key}", value, "PXAT", _ms(now + ttl_seconds))

    async def purge_expired(self, now: float) -> int:
        """Redis expires keys itself."""
        return 0
