"""Lua scripts of the Redis backend: each domain operation is one script, so it is atomic.

Every key a script touches carries the user's hash tag `{u:<user>}`, so each script runs on one
Cluster slot.  Ledger entries are JSON in a per-user list; an entry's id is its 1-based
position, so ids are unique and ordered *per user* (SQLite's are global).
"""

from __future__ import annotations

# Shared by the scripts that write the ledger.  KEYS[1] balance hash, KEYS[2] ledger list.
# `reason` is a JSON string; `fields` the entry's userId, requestId, ip, userAgent and at as JSON
# members the caller encoded.  Entries and receipts are concatenated, not `cjson.encode`d: the
# scripts run on Redis's one thread, and encoding two tables took a third of a vend's script.
_APPEND = """
local function append(action, delta, balance_after, reason, fields)
  -- The script is atomic, so the next position is the entry's id.
  local id = redis.call('LLEN', KEYS[2]) + 1
  local entry = '{"id":' .. id .. ',"action":"' .. action .. '","delta":' .. delta
    .. ',"balanceAfter":' .. balance_after .. ',"reason":' .. reason .. ',' .. fields .. '}'
  redis.call('RPUSH', KEYS[2], entry)
  return entry
end
local function balance()
  return tonumber(redis.call('HGET', KEYS[1], 'balance') or '0')
end
"""

# KEYS: balance, ledger, vends, idempotency, rate window.  ARGV: entry fields, request_id,
# receipt head (the receipt's JSON but its balance_after and closing brace), at, use_idem,
# fingerprint, idem_expires_at_ms, rate_limit (0 = off), window_reset_at_ms.
# Returns {status, payload, window count}: the payload is the stored receipt for a replay,
# else the balance (the caller, who sent every other field of a new receipt, builds it).
SPEND = (
    _APPEND
    + """
local window = 0
if tonumber(ARGV[8]) > 0 then
  window = redis.call('INCR', KEYS[5])
  if window == 1 then redis.call('PEXPIREAT', KEYS[5], ARGV[9]) end
  if window > tonumber(ARGV[8]) then
    local current = balance()
    append('vend_rate_limited', 0, current, '"rate_limit_exceeded"', ARGV[1])
    return {'rate_limited', tostring(current), window}
  end
end
if ARGV[5] == '1' then
  local stored = redis.call('HMGET', KEYS[4], 'fp', 'body')
  if stored[1] then
    if stored[1] ~= ARGV[6] then return {'key_conflict', tostring(balance()), window} end
    return {'replayed', stored[2], window}
  end
end
local current = balance()
if current <= 0 then
  append('vend_refused', 0, current, '"insufficient_credits"', ARGV[1])
  return {'insufficient', tostring(current), window}
end
-- One HSET for both fields, not HINCRBY and HSET: every write a script makes is also appended
-- to the AOF, on the same thread.  `current` was read by this same atomic script.
local after = current - 1
redis.call('HSET', KEYS[1], 'balance', after, 'updated_at', ARGV[4])
append('vend', -1, after, '""', ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], 'vended')
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[4], 'fp', ARGV[6], 'body', ARGV[3] .. ',"balance_after":' .. after .. '}')
  redis.call('PEXPIREAT', KEYS[4], ARGV[7])
end
return {'charged', tostring(after), window}
"""
)

# KEYS: balance, ledger, idempotency.  ARGV: user, amount, request_id, reason, entry fields, at,
# use_idem, fingerprint, idem_expires_at_ms.
GRANT = (
    _APPEND
    + """
if ARGV[7] == '1' then
  local stored = redis.call('HMGET', KEYS[3], 'fp', 'body')
  if stored[1] then
    if stored[1] ~= ARGV[8] then return {'key_conflict', ''} end
    return {'replayed', stored[2]}
  end
end
local amount = tonumber(ARGV[2])
local after = redis.call('HINCRBY', KEYS[1], 'balance', amount)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[6])
append('grant', amount, after, cjson.encode(ARGV[4]), ARGV[5])
local receipt = cjson.encode({user_id = ARGV[1], amount = amount, balance_after = after,
  request_id = ARGV[3], reason = ARGV[4], at = ARGV[6]})
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[3], 'fp', ARGV[8], 'body', receipt)
  redis.call('PEXPIREAT', KEYS[3], ARGV[9])
end
return {'granted', receipt}
"""
)

# KEYS: balance, ledger, vends.  ARGV: vend_request_id, reason, entry fields, at.
REFUND = (
    _APPEND
    + """
local state = redis.call('HGET', KEYS[3], ARGV[1])
if not state then return {'not_found', ''} end
if state == 'refunded' then return {'already_refunded', ''} end
redis.call('HSET', KEYS[3], ARGV[1], 'refunded')
local after = redis.call('HINCRBY', KEYS[1], 'balance', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
return {'refunded', append('refund', 1, after, cjson.encode(ARGV[2]), ARGV[3])}
"""
)

# KEYS: balance, ledger.  One user's balance and whole ledger at one instant.
USER_SNAPSHOT = """
return {redis.call('HGET', KEYS[1], 'balance') or '0', redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# KEYS: window counter.  ARGV: expires_at_ms.
HIT_WINDOW = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIREAT', KEYS[1], ARGV[1]) end
return count
"""

# KEYS: response hash.  ARGV: fingerprint, status, body, expires_at_ms.
REMEMBER = """
local stored = redis.call('HMGET', KEYS[1], 'fp', 'status', 'body')
if stored[1] then return stored end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'status', ARGV[2], 'body', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return {ARGV[1], ARGV[2], ARGV[3]}
"""

# KEYS: claim.  ARGV: owner.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
