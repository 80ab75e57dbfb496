"""The job lifecycle on Redis: one Lua script per operation, like the rest of `RedisStore`.

Keys, all in the owner's slot `{u:<user>}` so that a job's scripts may touch the balance and
ledger (a failed job's refund) in the same step:

    {u:<user>}:tok:<jti>    string  in_flight|<jobId>|<hold until, ms>  or  used|<jobId>
    {u:<user>}:job:<jobId>  hash    the job (fields of `JobRecord`), expires with retention
    jobref:<jobId>          string  the job's owner, for the webhook (which names no user)

A token's record has no expiry: a vend whose token ran a job must stay unrefundable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from redis.commands.core import AsyncScript

from engine.store import redis_scripts as lua
from engine.store.records import (
    FAILED_JOB_REFUND_REASON,
    ConsumeOrder,
    Context,
    JobObservation,
    JobRecord,
)
from engine.timeutil import iso

# Every script returns the job as a flat field/value list (HGETALL), or an empty one.
_RECORD = """
local function record(key) return redis.call('HGETALL', key) end
"""

# KEYS: balance, token, job.  ARGV: vend request id, job id, user, jti, hold_until ms, now ms,
# body, expires_at ms, now (seconds, as text).
CONSUME = """
if redis.call('HGET', KEYS[1], 'vend:' .. ARGV[1]) == 'refunded' then return 'token_refunded' end
local held = redis.call('GET', KEYS[2])
if held then
  if held == 'in_flight|' .. ARGV[2] .. '|' .. ARGV[5] then return 'consumed' end  -- run again
  if string.sub(held, 1, 5) == 'used|' then return 'token_used' end
  local hold_until = tonumber(string.match(held, '|(%d+)$'))
  if hold_until > tonumber(ARGV[6]) then return 'token_in_use' end
end
redis.call('SET', KEYS[2], 'in_flight|' .. ARGV[2] .. '|' .. ARGV[5])
redis.call('HSET', KEYS[3], 'user', ARGV[3], 'jti', ARGV[4], 'rid', ARGV[1],
  'state', 'submitting', 'upstream', '', 'body', ARGV[7], 'change', '', 'created', ARGV[9],
  'updated', ARGV[9], 'lost', '0', 'refunded', '0')
redis.call('PEXPIREAT', KEYS[3], ARGV[8])
return 'consumed'
"""

# Marks the token used if this job holds it.  KEYS[1] is the token.
_MARK_USED = """
local function spend_token(job_id)
  local held = redis.call('GET', KEYS[1])
  if held and string.sub(held, 1, 11 + #job_id) == 'in_flight|' .. job_id .. '|' then
    redis.call('SET', KEYS[1], 'used|' .. job_id)
  end
end
"""

# KEYS: token, job.  ARGV: job id, upstream id, body, now.
ACCEPT = (
    _RECORD
    + _MARK_USED
    + """
local state = redis.call('HGET', KEYS[2], 'state')
if not state then return {} end
if state == 'submitting' then
  redis.call('HSET', KEYS[2], 'state', 'accepted', 'upstream', ARGV[2], 'body', ARGV[3],
    'updated', ARGV[4])
elseif redis.call('HGET', KEYS[2], 'upstream') == '' then
  redis.call('HSET', KEYS[2], 'upstream', ARGV[2])
end
spend_token(ARGV[1])
return record(KEYS[2])
"""
)

# KEYS: token, job.  ARGV: job id.
RELEASE = (
    _MARK_USED
    + """
local state = redis.call('HGET', KEYS[2], 'state')
if not state then return 0 end
if state ~= 'submitting' then
  spend_token(ARGV[1])
  return 0
end
redis.call('DEL', KEYS[2])
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, 11 + #ARGV[1]) == 'in_flight|' .. ARGV[1] .. '|' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
)

# KEYS: balance, ledger, job.  ARGV: status, body, change, lost ('1'/'0'), grace (s),
# refund ('1'/'0'), upstream id, now (s), at, refund reason (JSON), entry fields.
OBSERVE = (
    lua._APPEND
    + _RECORD
    + """
local job = redis.call('HMGET', KEYS[3], 'state', 'rid', 'lost', 'change', 'upstream')
if not job[1] then return {} end
if job[1] == 'completed' or job[1] == 'failed' then return record(KEYS[3]) end
local now = tonumber(ARGV[8])
if ARGV[7] ~= '' and job[5] == '' then redis.call('HSET', KEYS[3], 'upstream', ARGV[7]) end
local status = ARGV[1]
if ARGV[4] == '1' then
  local since = tonumber(job[3])
  if since == 0 then
    redis.call('HSET', KEYS[3], 'lost', ARGV[8])
    return record(KEYS[3])
  end
  if now - since < tonumber(ARGV[5]) then return record(KEYS[3]) end
  status = 'failed'
elseif job[3] ~= '0' then
  redis.call('HSET', KEYS[3], 'lost', '0')
end
if status == 'completed' or status == 'failed' then
  local refunded = 0
  local field = 'vend:' .. job[2]
  if status == 'failed' and ARGV[6] == '1' and redis.call('HGET', KEYS[1], field) == 'vended' then
    local after = balance() + 1
    redis.call('HSET', KEYS[1], 'balance', after, 'updated_at', ARGV[9], field, 'refunded')
    append('refund', 1, after, ARGV[10], ARGV[11])
    refunded = 1
  end
  redis.call('HSET', KEYS[3], 'state', status, 'body', ARGV[2], 'change', ARGV[3],
    'updated', ARGV[8], 'refunded', refunded)
elseif ARGV[3] ~= job[4] then
  redis.call('HSET', KEYS[3], 'body', ARGV[2], 'change', ARGV[3], 'updated', ARGV[8])
end
return record(KEYS[3])
"""
)


def _user(user_id: str) -> str:
    return "{u:" + user_id + "}"


def token_key(user_id: str, jti: str) -> str:
    return f"{_user(user_id)}:tok:{jti}"


def _job_key(user_id: str, job_id: str) -> str:
    return f"{_user(user_id)}:job:{job_id}"


def _ms(epoch_seconds: float) -> int:
    return int(epoch_seconds * 1000)


def _record(job_id: str, flat: Sequence[bytes]) -> JobRecord | None:
    if not flat:
        return None
    raw = dict(zip(flat[::2], flat[1::2], strict=True))

    def text(name: bytes) -> str:
        return raw[name].decode()

    return JobRecord(
        job_id=job_id,
        user_id=text(b"user"),
        jti=text(b"jti"),
        vend_request_id=text(b"rid"),
        state=text(b"state"),
        upstream_id=text(b"upstream"),
        body=raw[b"body"],
        change=text(b"change"),
        created_at=float(raw[b"created"]),
        updated_at=float(raw[b"updated"]),
        lost_since=float(raw[b"lost"]),
        credits_refunded=int(raw[b"refunded"]),
    )


class RedisJobs:
    """The job operations of `RedisStore` (mixed into it)."""

    if TYPE_CHECKING:  # provided by RedisStore

        async def _run(
            self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
        ) -> Any: ...

        def _call(self, *command: Any) -> Any: ...

        _redis: Any

    def _register_job_scripts(self) -> None:
        self._consume = self._redis.register_script(CONSUME)
        self._accept = self._redis.register_script(ACCEPT)
        self._release_job = self._redis.register_script(RELEASE)
        self._observe = self._redis.register_script(OBSERVE)

    async def consume_token(self, order: ConsumeOrder) -> str:
        status = await self._run(
            self._consume,
            [
                _user(order.user_id) + ":bal",
                token_key(order.user_id, order.jti),
                _job_key(order.user_id, order.job_id),
            ],
            [
                order.vend_request_id,
                order.job_id,
                order.user_id,
                order.jti,
                _ms(order.hold_until),
                _ms(order.now),
                order.body,
                _ms(order.expires_at),
                repr(order.now),
            ],
        )
        status = status.decode() if isinstance(status, bytes) else str(status)
        if status == "consumed":
            # The webhook's way from a job to its owner; write-once, so a separate command
            # (a cluster keeps it in another slot).  Written before upstream hears of the job.
            await self._call(
                "SET", f"jobref:{order.job_id}", order.user_id, "PXAT", _ms(order.expires_at)
            )
        return status

    async def accept_job(
        self, user_id: str, job_id: str, upstream_id: str, body: bytes, now: float
    ) -> JobRecord | None:
        return await self._job_script(user_id, job_id, self._accept, [upstream_id, body, repr(now)])

    async def _job_script(
        self, user_id: str, job_id: str, script: AsyncScript, args: list[Any]
    ) -> JobRecord | None:
        jti = await self._call("HGET", _job_key(user_id, job_id), "jti")
        if jti is None:
            return None
        flat = await self._run(
            script,
            [token_key(user_id, jti.decode()), _job_key(user_id, job_id)],
            [job_id, *args],
        )
        return _record(job_id, flat)

    async def release_token(self, user_id: str, job_id: str) -> bool:
        jti = await self._call("HGET", _job_key(user_id, job_id), "jti")
        if jti is None:
            return False
        freed = await self._run(
            self._release_job,
            [token_key(user_id, jti.decode()), _job_key(user_id, job_id)],
            [job_id],
        )
        return bool(freed)

    async def job(self, user_id: str, job_id: str) -> JobRecord | None:
        return _record(job_id, await self._call("HGETALL", _job_key(user_id, job_id)))

    async def job_owner(self, job_id: str) -> str | None:
        owner = await self._call("GET", f"jobref:{job_id}")
        return owner.decode() if owner is not None else None

    async def observe_job(self, observation: JobObservation) -> JobRecord | None:
        seen, user = observation, _user(observation.user_id)
        at = iso(seen.now)
        fields = msgspec.json.encode(
            {
                "userId": seen.user_id,
                "requestId": seen.vend_request_id,
                "ip": Context().ip,
                "userAgent": Context().user_agent,
                "at": at,
            }
        )[1:-1]
        flat = await self._run(
            self._observe,
            [user + ":bal", user + ":ledger", _job_key(seen.user_id, seen.job_id)],
            [
                seen.status,
                seen.body,
                seen.change,
                "1" if seen.lost else "0",
                repr(seen.grace_seconds),
                "1" if seen.refund else "0",
                seen.upstream_id,
                repr(seen.now),
                at,
                msgspec.json.encode(FAILED_JOB_REFUND_REASON),
                fields,
            ],
        )
        return _record(seen.job_id, flat)
