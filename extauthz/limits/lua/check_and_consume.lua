-- Hash field names are $${kind_field}, rendered from extauthz/store/schema.py at load time.
-- One decision's state check in one call (on Redis Cluster: its part in one slot). Credentials
-- still active, nothing quarantined, single-use values (DPoP proof jtis) never seen before,
-- every window has room; only if all pass are the windows' counters incremented (a deny
-- consumes nothing).
--
-- KEYS, in this order:
--   S state hashes (records) whose status field must say active
--   B quarantine flags that must not exist
--   R single-use keys: set if absent with a TTL; present = replay
--   [1 risk hash of the subject: its multiplier field]           if ARGV[6] == "1"
--   [strike counter, strike guard, quarantine flag of the subject]   if ARGV[7] == "1"
--   W window counters: hashes of sub-bucket index -> count
-- ARGV:
--   1 now (epoch ms, the service's clock)   2 S   3 B   4 R   5 TTL of single-use keys (ms)
--   6 risk?   7 strike?   8 strikes that quarantine   9 strike period (ms)
--   10 quarantine TTL (ms)   11 subject (recorded in the quarantine)   12 cause
--   13 sub-buckets per window (k)
--   then per window: limit, length (ms), own ("1": the subject's own window: scaled by its
--   risk multiplier, and a deny by it is a strike)
--
-- Strikes: a deny by one of the subject's own windows counts one strike per episode (the
-- guard key lives until room comes back, so a client retrying too early does not strike
-- again); `ARGV[8]` strikes within the period quarantine the subject.
--
-- Algorithm: a window of length L is counted in k sub-buckets of L/k. A request at `now` sees
-- every sub-bucket that overlaps (now - L, now], the oldest one in full, so no trailing window
-- of length L ever holds more than `limit` admitted requests (never over-admits); the price is
-- up to one sub-bucket of under-admission. Admitted when used + 1 <= limit.
--
-- Returns {verdict, a, b, then per window: remaining, reset_ms, limit, denied}
--   verdict 1 admitted (a = 0, b = 0)
--           0 a window is full (a = retry after, ms; b = 1 if this deny quarantined the subject)
--          -1 a state hash is not active (a = its 1-based index)
--          -2 a single-use key was already set (a = its index)
--          -3 a quarantine flag is set (a = its index, b = its remaining ms)
--   reset_ms: on a deny by this window, ms until a request would be admitted; otherwise ms
--   until its oldest counted request leaves it (room comes back).
-- A single-use key is spent once the state checks pass, even if a window then denies: a proof
-- is good for one attempt.

local now = tonumber(ARGV[1])
local nstate = tonumber(ARGV[2])
local nblock = tonumber(ARGV[3])
local nsingle = tonumber(ARGV[4])
local single_ttl = tonumber(ARGV[5])
local k = tonumber(ARGV[13])
local FIRST = 13

for j = 1, nstate do
  if redis.call('HGET', KEYS[j], '${record_status}') ~= '${record_active}' then
    return {-1, j, 0}
  end
end
local i = nstate

for j = 1, nblock do
  local ttl = redis.call('PTTL', KEYS[i + j])
  if ttl ~= -2 then
    if ttl < 0 then ttl = 3600000 end
    return {-3, j, ttl}
  end
end
i = i + nblock

for j = 1, nsingle do
  if not redis.call('SET', KEYS[i + j], '1', 'PX', single_ttl, 'NX') then
    return {-2, j, 0}
  end
end
i = i + nsingle

local risk = 1
if ARGV[6] == '1' then
  i = i + 1
  local r = tonumber(redis.call('HGET', KEYS[i], '${risk_multiplier}') or '1')
  if r and r > 0 then risk = r end
end
local strike_key, guard_key, quarantine_key
if ARGV[7] == '1' then
  strike_key = KEYS[i + 1]
  guard_key = KEYS[i + 2]
  quarantine_key = KEYS[i + 3]
  i = i + 3
end

local nwin = (#ARGV - FIRST) / 3
local states = {}
local denied, own_denied, retry = false, false, 0

for w = 1, nwin do
  local key = KEYS[i + w]
  local limit = tonumber(ARGV[FIRST + 3 * w - 2])
  local len = tonumber(ARGV[FIRST + 3 * w - 1])
  local own = ARGV[FIRST + 3 * w] == '1'
  if own and risk ~= 1 and limit >= 1 then
    limit = math.floor(limit * risk)
    if limit < 1 then limit = 1 end
  end
  local size = len / k
  local cur = math.floor(now / size)
  local lo = cur - k
  local raw = redis.call('HGETALL', key)
  local used, oldest, stale = 0, nil, {}
  for f = 1, #raw, 2 do
    local b = tonumber(raw[f])
    if b < lo then
      stale[#stale + 1] = raw[f]
    else
      used = used + tonumber(raw[f + 1])
      if oldest == nil or b < oldest then oldest = b end
    end
  end
  local wait = 0
  if used + 1 > limit then
    denied = true
    if own then own_denied = true end
    wait = len
    if limit >= 1 then
      -- room comes back as the oldest sub-buckets leave the window, one by one
      local buckets = {}
      for f = 1, #raw, 2 do
        local b = tonumber(raw[f])
        if b >= lo then buckets[#buckets + 1] = {b, tonumber(raw[f + 1])} end
      end
      table.sort(buckets, function(x, y) return x[1] < y[1] end)
      local left = used
      for _, e in ipairs(buckets) do
        left = left - e[2]
        if left + 1 <= limit then
          wait = (e[1] + k + 1) * size - now
          break
        end
      end
    end
    if wait < 1 then wait = 1 end
    if wait > retry then retry = wait end
  end
  states[w] = {key, used, limit, len, size, cur, oldest, stale, wait}
end

local quarantined = 0
if denied then
  -- the guard holds when this episode ends (service clock): one strike per episode
  if own_denied and strike_key and tonumber(redis.call('GET', guard_key) or '0') <= now then
    redis.call('SET', guard_key, string.format('%d', now + retry), 'PX', retry)
    local n = redis.call('INCR', strike_key)
    if n == 1 then redis.call('PEXPIRE', strike_key, tonumber(ARGV[9])) end
    if n >= tonumber(ARGV[8]) then
      local ttl = tonumber(ARGV[10])
      redis.call('HSET', quarantine_key, '${quarantine_kind}', 'subject',
        '${quarantine_target}', ARGV[11], '${quarantine_cause}', ARGV[12], '${quarantine_by}', 'auto',
        '${quarantine_set_at}', string.format('%d', now / 1000),
        '${quarantine_until}', string.format('%d', (now + ttl) / 1000))
      redis.call('PEXPIRE', quarantine_key, ttl)
      redis.call('DEL', strike_key)
      quarantined = 1
      if ttl > retry then retry = ttl end
    end
  end
else
  for w = 1, nwin do
    local s = states[w]
    redis.call('HINCRBY', s[1], string.format('%d', s[6]), 1)
    if #s[8] > 0 then redis.call('HDEL', s[1], unpack(s[8])) end
    redis.call('PEXPIRE', s[1], s[4] + s[5] + 1000)
  end
end

local out = {denied and 0 or 1, retry, quarantined}
for w = 1, nwin do
  local s = states[w]
  local used, size, oldest = s[2], s[5], s[7]
  if not denied then
    used = used + 1
    if oldest == nil or s[6] < oldest then oldest = s[6] end
  end
  local reset = 0
  if s[9] > 0 then
    reset = s[9]
  elseif oldest ~= nil then
    reset = (oldest + k + 1) * size - now
  end
  local remaining = s[3] - used
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = s[3]
  out[#out + 1] = (s[9] > 0) and 1 or 0
end
return out
