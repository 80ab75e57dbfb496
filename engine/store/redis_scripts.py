"""Lua scripts of the Redis backend: each domain operation is one script, so it is atomic.

Every key a script touches carries the user's hash tag `{u:<user>}`, so each script runs on one
Cluster slot.  Ledger entries are JSON in a per-user list; an entry's id is the number of the
user's entries archived and trimmed off the list's head (`trimmed` in the balance hash,
`redis_archive`) plus its 1-based position, so ids are unique and ordered *per user* (SQLite's
are global), and the entry itself does not repeat it: readers add it from the position.

Each `redis.call` inside a script costs Redis's one thread (which shares the machine with the
engine) a microsecond or two besides the command itself, and every write is appended to the
AOF as well, so the vend path is written with as few calls as the rules allow: a vend's record
(`vend:<requestId>`) lives in the balance hash, written by the same `HSET` as the balance, and
an idempotency record is one string set with its expiry (`fingerprint|receipt`).  Records in
the layout of earlier engines (an `idem` hash, a separate `vends` hash, entries carrying their
id) are still read.
"""

from __future__ import annotations

# Shared by the scripts that write the ledger.  KEYS[1] balance hash, KEYS[2] ledger list.
# `reason` is a JSON string; `fields` the entry's userId, requestId, ip, userAgent and at as JSON
# members the caller encoded.  Entries and receipts are concatenated, not `cjson.encode`d: the
# scripts run on Redis's one thread, and encoding two tables took a third of a vend's script.
_APPEND = """
local function append(action, delta, balance_after, reason, fields)
  local entry = '{"action":"' .. action .. '","delta":' .. delta .. ',"balanceAfter":'
    .. balance_after .. ',"reason":' .. reason .. ',' .. fields .. '}'
  -- The new length is the entry's position; the trimmed head before it makes the id.
  local id = redis.call('RPUSH', KEYS[2], entry)
  return id + tonumber(redis.call('HGET', KEYS[1], 'trimmed') or '0'), entry
end
local function balance()
  return tonumber(redis.call('HGET', KEYS[1], 'balance') or '0')
end
"""

# An idempotency record: nil when the key is new, else (fingerprint, stored receipt).  A record
# an earlier engine wrote is a hash; GET on it is a WRONGTYPE error, so that case reads the hash.
_RECALL = """
local function recall(key)
  local stored = redis.pcall('GET', key)
  if type(stored) == 'table' and stored.err then
    local old = redis.call('HMGET', key, 'fp', 'body')
    if not old[1] then return nil end
    return old[1], old[2]
  end
  if not stored then return nil end
  local bar = string.find(stored, '|', 1, true)
  return string.sub(stored, 1, bar - 1), string.sub(stored, bar + 1)
end
"""

# KEYS: balance, ledger, idempotency, rate window.  ARGV: entry fields, request_id, receipt
# head (the receipt's JSON but its balance_after and closing brace), at, use_idem, fingerprint,
# idem_expires_at_ms, rate_limit (0 = off), window_reset_at_ms.
# Returns {status, payload, window count}: the payload is the stored receipt for a replay,
# else the balance (the caller, who sent every other field of a new receipt, builds it).
SPEND = (
    _APPEND
    + _RECALL
    + """
local window = 0
if tonumber(ARGV[8]) > 0 then
  window = redis.call('INCR', KEYS[4])
  if window == 1 then redis.call('PEXPIREAT', KEYS[4], ARGV[9]) end
  if window > tonumber(ARGV[8]) then
    local current = balance()
    -- Only the window's first refusal is kept; its count says how many followed.
    if window == tonumber(ARGV[8]) + 1 then
      append('vend_rate_limited', 0, current, '"rate_limit_exceeded"', ARGV[1])
    end
    return {'rate_limited', tostring(current), window}
  end
end
if ARGV[5] == '1' then
  local fingerprint, receipt = recall(KEYS[3])
  if fingerprint then
    if fingerprint ~= ARGV[6] then return {'key_conflict', tostring(balance()), window} end
    return {'replayed', receipt, window}
  end
end
local stored = redis.call('HGET', KEYS[1], 'balance')
local current = tonumber(stored or '0')
if current <= 0 then
  -- No account, so no credits ever: the caller counts it in the minute's tally instead.
  if not stored then return {'unfunded', '0', window} end
  append('vend_refused', 0, current, '"insufficient_credits"', ARGV[1])
  return {'insufficient', tostring(current), window}
end
-- One HSET writes the balance, its time and the vend's record.  `current` was read by this
-- same atomic script.
local after = current - 1
redis.call('HSET', KEYS[1], 'balance', after, 'updated_at', ARGV[4], 'vend:' .. ARGV[2], 'vended')
append('vend', -1, after, '""', ARGV[1])
if ARGV[5] == '1' then
  redis.call('SET', KEYS[3], ARGV[6] .. '|' .. ARGV[3] .. ',"balance_after":' .. after .. '}',
    'PXAT', ARGV[7])
end
return {'charged', tostring(after), window}
"""
)

# KEYS: balance, ledger, idempotency.  ARGV: user, amount, request_id, reason, entry fields, at,
# use_idem, fingerprint, idem_expires_at_ms.
GRANT = (
    _APPEND
    + _RECALL
    + """
if ARGV[7] == '1' then
  local fingerprint, receipt = recall(KEYS[3])
  if fingerprint then
    if fingerprint ~= ARGV[8] then return {'key_conflict', ''} end
    return {'replayed', receipt}
  end
end
local amount = tonumber(ARGV[2])
local after = balance() + amount
redis.call('HSET', KEYS[1], 'balance', after, 'updated_at', ARGV[6])
append('grant', amount, after, cjson.encode(ARGV[4]), ARGV[5])
local receipt = cjson.encode({user_id = ARGV[1], amount = amount, balance_after = after,
  request_id = ARGV[3], reason = ARGV[4], at = ARGV[6]})
if ARGV[7] == '1' then
  redis.call('SET', KEYS[3], ARGV[8] .. '|' .. receipt, 'PXAT', ARGV[9])
end
return {'granted', receipt}
"""
)

# The job lifecycle: a vend whose token bought a job, or is buying one, is not refundable.
# KEYS[4] is the token's record (`redis_jobs`), ARGV[5] now in ms.
_REFUND_GUARD = """
local held = redis.call('GET', KEYS[4])
if held then
  if string.sub(held, 1, 5) == 'used|' then return {'token_used', 0, ''} end
  if tonumber(string.match(held, '|(%d+)$')) > tonumber(ARGV[5]) then
    return {'token_in_use', 0, ''}
  end
end
"""

# KEYS: balance, ledger, vends of earlier engines, the vend's token.  ARGV: vend_request_id,
# reason, entry fields, at, now_ms.  Returns {status, entry id, entry as stored}.
REFUND = (
    _APPEND
    + _REFUND_GUARD
    + """
local field = 'vend:' .. ARGV[1]
local state = redis.call('HGET', KEYS[1], field)
if not state then
  state = redis.call('HGET', KEYS[3], ARGV[1])
end
if not state then return {'not_found', 0, ''} end
if state == 'refunded' then return {'already_refunded', 0, ''} end
local after = balance() + 1
redis.call('HSET', KEYS[1], 'balance', after, 'updated_at', ARGV[4], field, 'refunded')
local id, entry = append('refund', 1, after, cjson.encode(ARGV[2]), ARGV[3])
return {'refunded', id, entry}
"""
)

# KEYS: balance, ledger.  ARGV: page size.  One user's balance ('' without an account), ledger
# length, trimmed head (ids up to it are in the archive) and first page at one instant; the
# rest of that length is then read by id (`PAGE`), whatever the archiver trims meanwhile.
LEDGER_HEAD = """
local length = redis.call('LLEN', KEYS[2])
local head = redis.call('HMGET', KEYS[1], 'balance', 'trimmed')
return {head[1] or '', length, tonumber(head[2] or '0'),
  redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)}
"""

# KEYS: balance, ledger.  ARGV: after_id, limit.  The entries with ids after_id+1 ... still in
# the list, and the trimmed head at that instant: {trimmed, items}; the first item's id is
# trimmed + 1 + max(0, after_id - trimmed), and the ids up to `trimmed` are in the archive.
PAGE = """
local trimmed = tonumber(redis.call('HGET', KEYS[1], 'trimmed') or '0')
local first = math.max(0, tonumber(ARGV[1]) - trimmed)
local last = tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1 - trimmed
if last < first then return {trimmed, {}} end
return {trimmed, redis.call('LRANGE', KEYS[2], first, last)}
"""

# KEYS: balance, ledger.  ARGV: how many entries.  The archiver's view of one user: the trimmed
# head and the list's first entries, at one instant.
HEAD = """
return {tonumber(redis.call('HGET', KEYS[1], 'trimmed') or '0'),
  redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)}
"""

# KEYS: balance, ledger, the tombstone cursor of earlier engines.  ARGV: the trimmed head the
# archiver saw, how many entries off the list's head the archive now holds (fsynced).  Only if
# no one trimmed meanwhile (two archivers at once: the second finds the head moved and looks
# again), so every id stays the same; returns 1 if it trimmed.
TRIM = """
local trimmed = tonumber(redis.call('HGET', KEYS[1], 'trimmed') or '0')
if trimmed ~= tonumber(ARGV[1]) then return 0 end
redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
trimmed = trimmed + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'trimmed', trimmed)
if tonumber(redis.call('GET', KEYS[3]) or '0') <= trimmed then redis.call('DEL', KEYS[3]) end
return 1
"""

# KEYS: balance hash, records cursor, then the token records of the vends.  ARGV: the cursor's
# new position, then the vends' requestIds.  The records of archived vends leave RAM
# (`RedisHistory._drop_records`), in one step with the cursor.
# A hash that grew past Redis's compact (listpack) size stays a hashtable after HDEL, with a
# bucket array that need not shrink (not while an AOF rewrite runs): one left small is
# rewritten, which makes it compact again.
DROP_VEND_RECORDS = """
for i = 2, #ARGV do redis.call('HDEL', KEYS[1], 'vend:' .. ARGV[i]) end
for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
if redis.call('HLEN', KEYS[1]) <= 64
    and redis.call('OBJECT', 'ENCODING', KEYS[1]) == 'hashtable' then
  local fields = redis.call('HGETALL', KEYS[1])
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(fields))
end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[1])
end
return #ARGV - 1
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

# KEYS: balance, ledger.  ARGV: reason (a JSON string), entry fields, keep ('1': even without an
# account).  A refused vend: the user's balance and one `vend_refused` entry.  Returns
# {id, entry}, or {0, ''} for a user without an account unless kept (the caller tallies it).
REFUSE = (
    _APPEND
    + """
local stored = redis.call('HGET', KEYS[1], 'balance')
if not stored and ARGV[3] ~= '1' then return {0, ''} end
local id, entry = append('vend_refused', 0, tonumber(stored or '0'), ARGV[1], ARGV[2])
return {id, entry}
"""
)
