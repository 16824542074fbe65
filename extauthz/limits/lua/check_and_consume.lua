-- One decision's state check, in one call: credentials still active, single-use values
-- (DPoP proof jtis) never seen before, every sliding window has room; only if all pass are
-- the windows' counters incremented (a deny consumes nothing).
--
-- KEYS[1..S]           hashes whose field "status" must equal "active" (S = ARGV[2])
-- KEYS[S+1..S+R]       single-use keys: set if absent with a TTL; present = replay (R = ARGV[3])
-- KEYS[S+R+2w-1, S+R+2w]  window w: counter of the current bucket, of the previous bucket
-- ARGV[1]              now, epoch milliseconds (the service's clock)
-- ARGV[2]              S
-- ARGV[3]              R
-- ARGV[4]              TTL of the single-use keys, milliseconds
-- ARGV[5+2(w-1)], ARGV[6+2(w-1)]   window w: limit, window length in milliseconds
--
-- Sliding-window counter: used = prev * (time left of the previous bucket's overlap) + cur.
-- A request is admitted when used + 1 <= limit.
-- Returns {verdict, retry_after_ms, remaining_1, reset_ms_1, remaining_2, reset_ms_2, ...}
-- verdict: 1 admitted, 0 over a limit, -1 a state hash is not active (2nd value: its index),
-- -2 a single-use key was already set (2nd value: its index).
-- A single-use key is spent once the state check passes, even if a window then denies:
-- a proof is good for one attempt.

local now = tonumber(ARGV[1])
local nstate = tonumber(ARGV[2])
local nsingle = tonumber(ARGV[3])
local single_ttl = tonumber(ARGV[4])

for i = 1, nstate do
  if redis.call('HGET', KEYS[i], 'status') ~= 'active' then
    return {-1, i}
  end
end

for i = 1, nsingle do
  if not redis.call('SET', KEYS[nstate + i], '1', 'PX', single_ttl, 'NX') then
    return {-2, i}
  end
end

local base = nstate + nsingle
local nwin = (#ARGV - 4) / 2
local out = {1, 0}
local counts = {}
local denied = false
local retry = 0

for w = 1, nwin do
  local limit = tonumber(ARGV[3 + 2 * w])
  local win = tonumber(ARGV[4 + 2 * w])
  local cur = tonumber(redis.call('GET', KEYS[base + 2 * w - 1]) or '0')
  local prev = tonumber(redis.call('GET', KEYS[base + 2 * w]) or '0')
  local elapsed = now % win
  local used = prev * (win - elapsed) / win + cur
  local wait = 0
  if used + 1 > limit then
    denied = true
    if limit < 1 then
      wait = win
    elseif cur + 1 <= limit then
      -- room comes back as the previous bucket's weight decays within this bucket
      wait = math.ceil(win * (1 - (limit - cur - 1) / prev)) - elapsed
    else
      -- next bucket: this bucket's count becomes the decaying one
      wait = (win - elapsed) + math.ceil(win * (1 - (limit - 1) / cur))
    end
    if wait < 1 then wait = 1 end
    if wait > retry then retry = wait end
  end
  counts[w] = {used, limit, win, elapsed, wait}
end

if denied then
  out[1] = 0
  out[2] = retry
else
  for w = 1, nwin do
    local key = KEYS[base + 2 * w - 1]
    redis.call('INCR', key)
    redis.call('PEXPIRE', key, 2 * counts[w][3] + 1000)
  end
end

for w = 1, nwin do
  local c = counts[w]
  local used = c[1]
  if not denied then used = used + 1 end
  local remaining = math.floor(c[2] - used)
  if remaining < 0 then remaining = 0 end
  local reset = c[3] - c[4]
  if c[5] > 0 then reset = c[5] end
  out[#out + 1] = remaining
  out[#out + 1] = reset
end
return out
