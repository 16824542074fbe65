-- Hash field names are $${kind_field}, rendered from extauthz/store/schema.py at load time.
-- Policy denials (403) of a subject and of a source prefix, in one call: each pair is a
-- failure counter (sub-buckets, as check_and_consume.lua) and the quarantine flag of the same
-- tag. If a flag is already set, nothing is counted; otherwise the denial counts in every
-- pair, and a pair past its limit quarantines its target.
--
-- KEYS: per pair, counter then flag
-- ARGV: 1 now (ms)  2 sub-buckets  3 window (ms)  4 quarantine TTL (ms)  5 cause
--       then per pair: limit, kind (subject | prefix), target (recorded)
-- Returns {0, 0} when no pair is blocked, else {1-based pair index, remaining quarantine ms}.

local now, k = tonumber(ARGV[1]), tonumber(ARGV[2])
local len, q = tonumber(ARGV[3]), tonumber(ARGV[4])
local npairs = #KEYS / 2

for p = 1, npairs do
  local ttl = redis.call('PTTL', KEYS[2 * p])
  if ttl ~= -2 then
    if ttl < 0 then ttl = 3600000 end
    return {p, ttl}
  end
end

local size = len / k
local cur = math.floor(now / size)
local blocked = 0
for p = 1, npairs do
  local counter, flag = KEYS[2 * p - 1], KEYS[2 * p]
  local limit = tonumber(ARGV[3 + 3 * p])
  local raw = redis.call('HGETALL', counter)
  local used, stale = 1, {}
  for f = 1, #raw, 2 do
    if tonumber(raw[f]) < cur - k then
      stale[#stale + 1] = raw[f]
    else
      used = used + tonumber(raw[f + 1])
    end
  end
  redis.call('HINCRBY', counter, string.format('%d', cur), 1)
  if #stale > 0 then redis.call('HDEL', counter, unpack(stale)) end
  redis.call('PEXPIRE', counter, len + size + 1000)
  if used > limit then
    redis.call('HSET', flag, '${quarantine_kind}', ARGV[4 + 3 * p],
      '${quarantine_target}', ARGV[5 + 3 * p], '${quarantine_cause}', ARGV[5], '${quarantine_by}', 'auto',
      '${quarantine_set_at}', string.format('%d', now / 1000),
      '${quarantine_until}', string.format('%d', (now + q) / 1000))
    redis.call('PEXPIRE', flag, q)
    if blocked == 0 then blocked = p end
  end
end
if blocked > 0 then return {blocked, q} end
return {0, 0}
