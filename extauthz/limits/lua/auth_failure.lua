-- Hash field names are $${kind_field}, rendered from extauthz/store/schema.py at load time.
-- A failed authentication from a source prefix, in one call: count it in the prefix's failure
-- window (sub-buckets, as check_and_consume.lua) and, past the limit, quarantine the prefix.
--
-- KEYS[1] the prefix's failure counter   KEYS[2] the prefix's quarantine flag
-- ARGV: 1 now (ms)  2 limit  3 window (ms)  4 sub-buckets  5 quarantine TTL (ms)
--       6 prefix (recorded)  7 cause
-- Returns {1, remaining quarantine ms} when the prefix is (now) quarantined, else {0, count}.

local now = tonumber(ARGV[1])
local ttl = redis.call('PTTL', KEYS[2])
if ttl ~= -2 then
  if ttl < 0 then ttl = 3600000 end
  return {1, ttl}
end
local limit, len, k = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local size = len / k
local cur = math.floor(now / size)
local raw = redis.call('HGETALL', KEYS[1])
local used, stale = 0, {}
for f = 1, #raw, 2 do
  if tonumber(raw[f]) < cur - k then
    stale[#stale + 1] = raw[f]
  else
    used = used + tonumber(raw[f + 1])
  end
end
used = used + 1
redis.call('HINCRBY', KEYS[1], string.format('%d', cur), 1)
if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
redis.call('PEXPIRE', KEYS[1], len + size + 1000)
if used > limit then
  local q = tonumber(ARGV[5])
  redis.call('HSET', KEYS[2], '${quarantine_kind}', 'prefix', '${quarantine_target}', ARGV[6],
    '${quarantine_cause}', ARGV[7], '${quarantine_by}', 'auto',
    '${quarantine_set_at}', string.format('%d', now / 1000),
    '${quarantine_until}', string.format('%d', (now + q) / 1000))
  redis.call('PEXPIRE', KEYS[2], q)
  return {1, q}
end
return {0, used}
